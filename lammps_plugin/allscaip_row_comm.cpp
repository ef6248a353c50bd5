/* ----------------------------------------------------------------------
   Row forward communication and summing reverse communication as torch
   autograd Functions (allscaip_row_comm.h).
------------------------------------------------------------------------- */

#include "allscaip_row_comm.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace allscaip {

namespace {

const char *kCtxKey = "row_context";

RowCommContext *context_of(AutogradContext *ctx)
{
  return reinterpret_cast<RowCommContext *>(static_cast<intptr_t>(ctx->saved_data[kCtxKey].toInt()));
}

torch::Tensor host_f64(const torch::Tensor &t)
{
  return t.detach().to(torch::kCPU, torch::kFloat64).contiguous();
}

// copy columns [c0, c0 + w) of `rows` (row-major, C columns) into buffer rows `atoms` (width W)
void put(double *buf, int64_t W, const std::vector<int> &atoms, const double *rows, int64_t C,
         int64_t c0, int64_t w)
{
  for (size_t r = 0; r < atoms.size(); ++r)
    std::memcpy(buf + (int64_t) atoms[r] * W, rows + (int64_t) r * C + c0, w * sizeof(double));
}

void get(const double *buf, int64_t W, const std::vector<int> &atoms, double *rows, int64_t C,
         int64_t c0, int64_t w)
{
  for (size_t r = 0; r < atoms.size(); ++r)
    std::memcpy(rows + (int64_t) r * C + c0, buf + (int64_t) atoms[r] * W, w * sizeof(double));
}

}    // namespace

/* ---------------------------------------------------------------------- */

torch::Tensor forward_rows(RowCommContext *rc, const torch::Tensor &owned)
{
  HaloExchanger *halo = rc->halo;
  const int64_t W = halo->halo_width();
  const int64_t nc = static_cast<int64_t>(rc->owned_atoms.size());
  const int64_t ng = static_cast<int64_t>(rc->ghost_atoms.size());
  if (owned.dim() != 2 || owned.size(0) != nc)
    throw std::runtime_error("allscaip: row forward communication got rows of unexpected shape");
  const int64_t C = owned.size(1);
  auto src = host_f64(owned);
  auto out = torch::zeros({ng, C}, torch::TensorOptions().dtype(torch::kFloat64));
  double *buf = halo->halo_buffer();
  for (int64_t c0 = 0; c0 < C; c0 += W) {
    const int64_t w = std::min(W, C - c0);
    put(buf, W, rc->owned_atoms, src.data_ptr<double>(), C, c0, w);
    halo->halo_forward();
    get(buf, W, rc->ghost_atoms, out.data_ptr<double>(), C, c0, w);
    rc->forward_calls++;
  }
  return out.to(owned.device(), owned.scalar_type());
}

torch::Tensor reverse_sum_rows(RowCommContext *rc, const torch::Tensor &all)
{
  HaloExchanger *halo = rc->halo;
  const int64_t W = halo->halo_width();
  const int64_t nc = static_cast<int64_t>(rc->owned_atoms.size());
  const int64_t ng = static_cast<int64_t>(rc->ghost_atoms.size());
  if (all.dim() != 2 || all.size(0) != nc + ng)
    throw std::runtime_error("allscaip: row reverse communication got rows of unexpected shape");
  const int64_t C = all.size(1);
  auto src = host_f64(all);
  const double *ghost_rows = src.data_ptr<double>() + nc * C;
  auto out = torch::zeros({nc, C}, torch::TensorOptions().dtype(torch::kFloat64));
  double *buf = halo->halo_buffer();
  for (int64_t c0 = 0; c0 < C; c0 += W) {
    const int64_t w = std::min(W, C - c0);
    std::fill(buf, buf + halo->halo_rows() * W, 0.0);
    put(buf, W, rc->ghost_atoms, ghost_rows, C, c0, w);
    halo->halo_reverse();
    get(buf, W, rc->owned_atoms, out.data_ptr<double>(), C, c0, w);
    rc->reverse_calls++;
  }
  auto summed = out.to(all.device(), all.scalar_type());
  return summed + all.slice(0, 0, nc);
}

/* ---------------------------------------------------------------------- */

torch::Tensor RowForward::forward(AutogradContext *ctx, torch::Tensor owned, RowCommContext *rc)
{
  ctx->saved_data[kCtxKey] = static_cast<int64_t>(reinterpret_cast<intptr_t>(rc));
  return forward_rows(rc, owned);
}

variable_list RowForward::backward(AutogradContext *ctx, variable_list grad_out)
{
  auto *rc = context_of(ctx);
  const int64_t nc = static_cast<int64_t>(rc->owned_atoms.size());
  auto grad = grad_out[0];
  // owned rows contribute nothing of their own here: only the ghost copies' gradients come back
  auto all = torch::cat({torch::zeros({nc, grad.size(1)}, grad.options()), grad}, 0);
  return {reverse_sum_rows(rc, all), torch::Tensor()};
}

torch::Tensor RowReverseSum::forward(AutogradContext *ctx, torch::Tensor all, RowCommContext *rc)
{
  ctx->saved_data[kCtxKey] = static_cast<int64_t>(reinterpret_cast<intptr_t>(rc));
  return reverse_sum_rows(rc, all);
}

variable_list RowReverseSum::backward(AutogradContext *ctx, variable_list grad_out)
{
  auto *rc = context_of(ctx);
  auto grad = grad_out[0];
  return {torch::cat({grad, forward_rows(rc, grad)}, 0), torch::Tensor()};
}

}    // namespace allscaip
