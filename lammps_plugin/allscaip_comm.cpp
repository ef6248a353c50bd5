/* ----------------------------------------------------------------------
   Ghost exchange and all-gather as torch autograd Functions.
------------------------------------------------------------------------- */

#include "allscaip_comm.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace allscaip {

namespace {

const char *kCtxKey = "context";

template <typename T> T *context_of(AutogradContext *ctx)
{
  return reinterpret_cast<T *>(static_cast<intptr_t>(ctx->saved_data[kCtxKey].toInt()));
}

MPI_Datatype mpi_type(torch::ScalarType t)
{
  if (t == torch::kFloat64) return MPI_DOUBLE;
  if (t == torch::kFloat32) return MPI_FLOAT;
  throw std::runtime_error("allscaip: all-gather of unsupported dtype");
}

// element counts/offsets of rows of `row` values; MPI counts are int
void scaled(const std::vector<int> &rows, int64_t row, std::vector<int> &out)
{
  out.resize(rows.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    const int64_t n = static_cast<int64_t>(rows[r]) * row;
    if (n > std::numeric_limits<int>::max())
      throw std::runtime_error("allscaip: all-gather message exceeds 2^31 elements; use fewer "
                               "atoms or a model with a smaller hidden size");
    out[r] = static_cast<int>(n);
  }
}

}    // namespace

/* ---------------------------------------------------------------------- */

void GatherContext::setup(MPI_Comm world, int local_count)
{
  comm = world;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &nranks);
  counts.assign(nranks, 0);
  displs.assign(nranks, 0);
  MPI_Allgather(&local_count, 1, MPI_INT, counts.data(), 1, MPI_INT, comm);
  total = 0;
  for (int r = 0; r < nranks; ++r) {
    displs[r] = static_cast<int>(total);
    total += counts[r];
  }
}

/* ---------------------------------------------------------------------- */

void gather_rows_by_tag(MPI_Comm world, const std::vector<int64_t> &centre_tags,
                        std::unordered_map<int64_t, int64_t> &row_of_tag)
{
  int nranks = 1;
  MPI_Comm_size(world, &nranks);
  const int local = static_cast<int>(centre_tags.size());
  std::vector<int> counts(nranks, 0), displs(nranks, 0);
  MPI_Allgather(&local, 1, MPI_INT, counts.data(), 1, MPI_INT, world);
  int64_t total = 0;
  for (int r = 0; r < nranks; ++r) {
    if (total > std::numeric_limits<int>::max())
      throw std::runtime_error("allscaip: tag gather exceeds 2^31 atoms");
    displs[r] = static_cast<int>(total);
    total += counts[r];
  }
  std::vector<int64_t> tags(total);
  MPI_Allgatherv(centre_tags.data(), local, MPI_INT64_T, tags.data(), counts.data(),
                 displs.data(), MPI_INT64_T, world);
  row_of_tag.clear();
  row_of_tag.reserve(static_cast<size_t>(total));
  for (int64_t row = 0; row < total; ++row) row_of_tag[tags[row]] = row;
}

/* ----------------------------------------------------------------------
   GhostExchange
------------------------------------------------------------------------- */

torch::Tensor ghost_exchange_forward(const torch::Tensor &h_owned, GhostExchangeContext *gx)
{
  HaloExchanger *halo = gx->halo;
  const int64_t width = halo->halo_width();
  const int64_t nc = static_cast<int64_t>(gx->owned_atoms.size());
  const int64_t ng = static_cast<int64_t>(gx->ghost_atoms.size());
  if (h_owned.size(0) != nc || h_owned.size(1) != width)
    throw std::runtime_error("allscaip: ghost exchange got node states of unexpected shape");

  auto src = h_owned.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const double *s = src.data_ptr<double>();
  double *buf = halo->halo_buffer();
  for (int64_t c = 0; c < nc; ++c)
    std::memcpy(buf + gx->owned_atoms[c] * width, s + c * width, width * sizeof(double));

  halo->halo_forward();
  gx->forward_calls++;

  auto out = torch::empty({ng, width}, torch::TensorOptions().dtype(torch::kFloat64));
  double *o = out.data_ptr<double>();
  for (int64_t g = 0; g < ng; ++g)
    std::memcpy(o + g * width, buf + gx->ghost_atoms[g] * width, width * sizeof(double));
  return out.to(h_owned.device(), h_owned.scalar_type());
}

torch::Tensor ghost_exchange_reverse(const torch::Tensor &grad, GhostExchangeContext *gx)
{
  HaloExchanger *halo = gx->halo;
  const int64_t width = halo->halo_width();
  const int64_t nc = static_cast<int64_t>(gx->owned_atoms.size());
  const int64_t ng = static_cast<int64_t>(gx->ghost_atoms.size());

  const auto device = grad.device();
  const auto dtype = grad.scalar_type();
  auto g64 = grad.to(torch::kCPU, torch::kFloat64).contiguous();
  const double *gs = g64.data_ptr<double>();

  double *buf = halo->halo_buffer();
  std::fill(buf, buf + halo->halo_rows() * width, 0.0);
  for (int64_t g = 0; g < ng; ++g)
    std::memcpy(buf + gx->ghost_atoms[g] * width, gs + g * width, width * sizeof(double));

  halo->halo_reverse();
  gx->reverse_calls++;

  auto out = torch::empty({nc, width}, torch::TensorOptions().dtype(torch::kFloat64));
  double *o = out.data_ptr<double>();
  for (int64_t c = 0; c < nc; ++c)
    std::memcpy(o + c * width, buf + gx->owned_atoms[c] * width, width * sizeof(double));
  return out.to(device, dtype);
}

torch::Tensor GhostExchange::forward(AutogradContext *ctx, torch::Tensor h_owned,
                                     GhostExchangeContext *gx)
{
  ctx->saved_data[kCtxKey] = static_cast<int64_t>(reinterpret_cast<intptr_t>(gx));
  return ghost_exchange_forward(h_owned, gx);
}

variable_list GhostExchange::backward(AutogradContext *ctx, variable_list grad_out)
{
  return {ghost_exchange_reverse(grad_out[0], context_of<GhostExchangeContext>(ctx)),
          torch::Tensor()};
}

/* ----------------------------------------------------------------------
   AllGather
------------------------------------------------------------------------- */

std::pair<torch::Tensor, torch::Tensor> all_gather_forward(const torch::Tensor &k,
                                                           const torch::Tensor &v, GatherContext *gc)
{
  const int64_t heads = k.size(0), nc = k.size(1), d = k.size(2);
  if (nc != gc->counts[gc->rank] || v.sizes() != k.sizes())
    throw std::runtime_error("allscaip: all-gather got keys/values of unexpected shape");
  const int64_t row = 2 * heads * d;
  const auto dtype = k.scalar_type();

  // owned rows [Nc, 2, heads, d], contiguous on the host
  auto packed = torch::stack({k.detach(), v.detach()}, 0)
                    .permute({2, 0, 1, 3})
                    .to(torch::kCPU)
                    .contiguous();
  auto gathered = torch::empty({gc->total, 2, heads, d}, packed.options());
  std::vector<int> counts, displs;
  scaled(gc->counts, row, counts);
  scaled(gc->displs, row, displs);
  MPI_Datatype type = mpi_type(dtype);
  MPI_Allgatherv(packed.data_ptr(), static_cast<int>(nc * row), type, gathered.data_ptr(),
                 counts.data(), displs.data(), type, gc->comm);
  gc->forward_calls++;

  auto full = gathered.to(k.device()).permute({1, 2, 0, 3});    // [2, heads, N, d]
  return {full.select(0, 0).contiguous(), full.select(0, 1).contiguous()};
}

std::pair<torch::Tensor, torch::Tensor> all_gather_reverse(const torch::Tensor &gk,
                                                           const torch::Tensor &gv, GatherContext *gc)
{
  const int64_t heads = gk.size(0), d = gk.size(2);
  const int64_t nc = gc->counts[gc->rank];
  const int64_t row = 2 * heads * d;
  const auto device = gk.device();

  auto packed = torch::stack({gk, gv}, 0).permute({2, 0, 1, 3}).to(torch::kCPU).contiguous();
  auto mine = torch::empty({nc, 2, heads, d}, packed.options());
  std::vector<int> counts;
  scaled(gc->counts, row, counts);
  MPI_Datatype type = mpi_type(packed.scalar_type());
  MPI_Reduce_scatter(packed.data_ptr(), mine.data_ptr(), counts.data(), type, MPI_SUM, gc->comm);
  gc->backward_calls++;

  auto g = mine.to(device).permute({1, 2, 0, 3});    // [2, heads, Nc, d]
  return {g.select(0, 0).contiguous(), g.select(0, 1).contiguous()};
}

variable_list AllGather::forward(AutogradContext *ctx, torch::Tensor k, torch::Tensor v,
                                 GatherContext *gc)
{
  ctx->saved_data[kCtxKey] = static_cast<int64_t>(reinterpret_cast<intptr_t>(gc));
  auto [kk, vv] = all_gather_forward(k, v, gc);
  return {kk, vv};
}

variable_list AllGather::backward(AutogradContext *ctx, variable_list grad_out)
{
  auto [gk, gv] = all_gather_reverse(grad_out[0], grad_out[1], context_of<GatherContext>(ctx));
  return {gk, gv, torch::Tensor()};
}

}    // namespace allscaip
