/* -*- c++ -*- ----------------------------------------------------------
   Node attention with the node encoding's pair bias, in query blocks, with a
   recomputing backward: memory linear in atoms.

   One rank's owned queries q [heads, m, d] attend over the keys and values
   gathered from every rank, K, V [heads, n, d]; the logit of (row, col)
   gains pair_bias[p, :] for each encoding pair p with pair_row[p] = row and
   pair_col[p] = col (several periodic images of one pair add up). The logits
   [heads, m, n] are never held whole: the forward computes them for a block
   of query rows at a time (each block holds whole rows, so its softmax is
   exact), and the backward computes each block's probabilities again from
   q, K, V and the pair bias. Saved between forward and backward: the inputs
   and the output, O(n d + P).

   The same computation as allscaip/model/node_encoding.py
   (BlockedPairBiasAttention; the Python model's eager path). The backward is
   first order only (forces; no double backward), which is all the plugin asks.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_ATTENTION_H
#define ALLSCAIP_ATTENTION_H

#include <torch/torch.h>

namespace allscaip {

// The largest logits block [heads, rows, n] in elements when the user sets none: 2^24 values
// (128 MiB in float64), small next to a large system's other buffers and yet thousands of rows,
// as the Python model's BLOCK_LOGITS_ELEMENTS.
constexpr int64_t DEFAULT_BLOCK_LOGITS = int64_t(1) << 24;

// query rows per block so that [heads, rows, n] holds at most block_logits values (>= 1 row)
int64_t attention_block_rows(int64_t heads, int64_t n, int64_t block_logits);

class BlockedPairBiasAttention : public torch::autograd::Function<BlockedPairBiasAttention> {
 public:
  // q [h, m, d], k, v [h, n, d], pair_bias [P, h], pair_row [P] (ascending, < m),
  // pair_col [P] (< n) -> out [h, m, d]
  static torch::Tensor forward(torch::autograd::AutogradContext *ctx, torch::Tensor q,
                               torch::Tensor k, torch::Tensor v, torch::Tensor pair_bias,
                               torch::Tensor pair_row, torch::Tensor pair_col,
                               int64_t block_rows);
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grad_out);
};

}    // namespace allscaip

#endif
