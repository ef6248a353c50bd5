/* ----------------------------------------------------------------------
   Blocked pair-biased node attention with a recomputing backward
   (see allscaip_attention.h). With P_b the probabilities of block b,
   g = dL/dout and D_i = sum_d g_id out_id:
     dV   += P_b^T g_b
     dS_b  = P_b * (g_b V^T - D_b)          (logit gradients of the block)
     dq_b  = dS_b K / sqrt(d),  dK += dS_b^T q_b / sqrt(d)
     dbias[p] = dS_b[:, row_p, col_p]
------------------------------------------------------------------------- */

#include "allscaip_attention.h"

#include <cmath>
#include <vector>

namespace allscaip {

namespace {

struct Block {
  int64_t row0, row1;      // query rows [row0, row1)
  int64_t pair0, pair1;    // their pairs [pair0, pair1) (pair_row ascending)
};

std::vector<Block> query_blocks(int64_t m, int64_t block_rows, const torch::Tensor &pair_row)
{
  std::vector<int64_t> starts;
  for (int64_t r = 0; r < m; r += block_rows) starts.push_back(r);
  starts.push_back(m);
  // first pair of each block start (the rows live on the model's device)
  const torch::Tensor bounds = torch::searchsorted(
      pair_row, torch::tensor(starts, pair_row.options()).to(pair_row.device()));
  const torch::Tensor bounds_cpu = bounds.to(torch::kCPU).contiguous();
  const int64_t *pair_at = bounds_cpu.data_ptr<int64_t>();
  std::vector<Block> blocks;
  for (size_t b = 0; b + 1 < starts.size(); b++)
    blocks.push_back({starts[b], starts[b + 1], pair_at[b], pair_at[b + 1]});
  return blocks;
}

// flat positions (row - row0) * n + col of a block's pairs in its logits [h, rows * n]
torch::Tensor block_flat(const torch::Tensor &pair_row, const torch::Tensor &pair_col,
                         const Block &b, int64_t n)
{
  return (pair_row.slice(0, b.pair0, b.pair1) - b.row0) * n + pair_col.slice(0, b.pair0, b.pair1);
}

torch::Tensor block_probabilities(const torch::Tensor &q, const torch::Tensor &k,
                                  const torch::Tensor &pair_bias, const torch::Tensor &flat,
                                  const Block &b, double scale)
{
  const int64_t heads = q.size(0), n = k.size(1);
  torch::Tensor logits = torch::matmul(q.slice(1, b.row0, b.row1), k.transpose(1, 2)).mul_(scale);
  logits.view({heads, -1}).index_add_(1, flat, pair_bias.slice(0, b.pair0, b.pair1).t());
  return torch::softmax(logits.view({heads, b.row1 - b.row0, n}), -1);
}

}    // namespace

int64_t attention_block_rows(int64_t heads, int64_t n, int64_t block_logits)
{
  return std::max<int64_t>(1, block_logits / std::max<int64_t>(1, heads * n));
}

torch::Tensor BlockedPairBiasAttention::forward(torch::autograd::AutogradContext *ctx,
                                                torch::Tensor q, torch::Tensor k, torch::Tensor v,
                                                torch::Tensor pair_bias, torch::Tensor pair_row,
                                                torch::Tensor pair_col, int64_t block_rows)
{
  const int64_t n = k.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(2)));
  torch::Tensor out = torch::empty({q.size(0), q.size(1), v.size(2)}, v.options());
  for (const Block &b : query_blocks(q.size(1), block_rows, pair_row)) {
    const torch::Tensor prob =
        block_probabilities(q, k, pair_bias, block_flat(pair_row, pair_col, b, n), b, scale);
    out.slice(1, b.row0, b.row1).copy_(torch::matmul(prob, v));
  }
  ctx->save_for_backward({q, k, v, pair_bias, pair_row, pair_col, out});
  ctx->saved_data["block_rows"] = block_rows;
  return out;
}

torch::autograd::variable_list BlockedPairBiasAttention::backward(
    torch::autograd::AutogradContext *ctx, torch::autograd::variable_list grad_out)
{
  torch::NoGradGuard first_order_only;
  const auto saved = ctx->get_saved_variables();
  const torch::Tensor &q = saved[0], &k = saved[1], &v = saved[2], &pair_bias = saved[3];
  const torch::Tensor &pair_row = saved[4], &pair_col = saved[5], &out = saved[6];
  const int64_t block_rows = ctx->saved_data["block_rows"].toInt();
  const int64_t heads = q.size(0), n = k.size(1);
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(2)));
  const torch::Tensor g = grad_out[0].contiguous();
  const torch::Tensor row_dot = (g * out).sum(-1, true);    // D_i [h, m, 1]

  torch::Tensor dq = torch::zeros_like(q);
  torch::Tensor dk = torch::zeros_like(k);
  torch::Tensor dv = torch::zeros_like(v);
  torch::Tensor dbias = torch::zeros_like(pair_bias);
  for (const Block &b : query_blocks(q.size(1), block_rows, pair_row)) {
    const torch::Tensor flat = block_flat(pair_row, pair_col, b, n);
    const torch::Tensor prob = block_probabilities(q, k, pair_bias, flat, b, scale);
    const torch::Tensor g_b = g.slice(1, b.row0, b.row1);
    dv.add_(torch::matmul(prob.transpose(1, 2), g_b));
    torch::Tensor dlogits = torch::matmul(g_b, v.transpose(1, 2));
    dlogits.sub_(row_dot.slice(1, b.row0, b.row1)).mul_(prob);
    dbias.slice(0, b.pair0, b.pair1).copy_(dlogits.view({heads, -1}).index_select(1, flat).t());
    dlogits.mul_(scale);
    dq.slice(1, b.row0, b.row1).copy_(torch::matmul(dlogits, k));
    dk.add_(torch::matmul(dlogits.transpose(1, 2), q.slice(1, b.row0, b.row1)));
  }
  return {dq, dk, dv, dbias, torch::Tensor(), torch::Tensor(), torch::Tensor()};
}

}    // namespace allscaip
