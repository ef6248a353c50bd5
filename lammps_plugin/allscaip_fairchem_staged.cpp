/* ----------------------------------------------------------------------
   Staged fairchem AllScAIP on one rank (allscaip_fairchem_staged.h):
     top      = nearest(vec, mask);  top_all = [top ; RowForward(top)]
     column, kept, bias = rows(vec, mask, index, top_all)
     W        = MPI_Allreduce(max) of the row widths
     tokens, src_bias, desc = prepare(vec, column, kept, bias, Z_c, charge, spin, W)
     desc_all = [desc ; forward_rows(desc)]            (no gradient)
     dst      = destinations(vec, mask, index, top_all, desc_all)
     per layer: t   = source_attention(l, tokens, src_bias)
                out = destination_attention(l, [t ; RowForward(t)], dst)
                tokens = RowReverseSum(out)
                q, k, v = node_project(l, tokens); K, V = AllGather(k, v)
                tokens = node_finish(l, tokens, q, K, V)
     e = readout(tokens, Z_c, natoms);  E_rank = sum(e)
   dE_rank/dvec by autograd; its backward runs the reverse communications.
------------------------------------------------------------------------- */

#include "allscaip_fairchem_staged.h"

#include <torch/csrc/autograd/autograd.h>

#include <stdexcept>
#include <string>

namespace allscaip {

namespace {

int64_t chunks(int64_t columns, int64_t width)
{
  return (columns + width - 1) / width;
}

}    // namespace

StagedResult evaluate_fairchem_staged(Model &model, const NeighborLayout &layout, int64_t charge,
                                      int64_t spin, int64_t natoms, MPI_Comm world,
                                      RowCommContext &rows, GatherContext &gather)
{
  const ModelInfo &info = model.info();
  const torch::Device device = model.device();
  const torch::ScalarType dtype = model.dtype();
  const int64_t nc = layout.num_centres();
  const int64_t na = layout.num_rows();
  const int64_t kmax = layout.kmax;
  if (!info.node_attention)
    throw std::runtime_error("a fairchem model without node attention is not supported by the staged "
                             "evaluation; run it on one MPI rank");

  rows.owned_atoms = layout.centres;
  rows.ghost_atoms = layout.ghosts;
  gather.setup(world, static_cast<int>(nc));    // collective

  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto host = [](const auto &v) { return const_cast<void *>(static_cast<const void *>(v.data())); };
  torch::Tensor vec = torch::from_blob(host(layout.vec), {nc, kmax, 3}, f64)
                          .to(device, dtype, false, true)
                          .requires_grad_(true);
  torch::Tensor mask = torch::from_blob(host(layout.mask), {nc, kmax}, torch::kUInt8)
                           .to(device, torch::kBool, false, true);
  torch::Tensor index = torch::from_blob(host(layout.index), {nc, kmax}, i64)
                            .to(device, torch::kInt64, false, true);
  torch::Tensor numbers_c = torch::from_blob(host(layout.numbers), {na}, i64)
                                .to(device, torch::kInt64, false, true)
                                .slice(0, 0, nc);

  torch::jit::Module stages = model.module().attr("stages").toModule();
  auto call = [&stages](const char *name, std::vector<torch::jit::IValue> args) {
    return stages.get_method(name)(std::move(args));
  };
  const int64_t fwd0 = rows.forward_calls, rev0 = rows.reverse_calls;
  const int64_t gather_fwd0 = gather.forward_calls, gather_bwd0 = gather.backward_calls;
  const int64_t halo = rows.halo->halo_width();

  // The layer loop exists twice: here (under MPI) and in export/fairchem_dd_reference.py
  // (the same calls in Python, the specification). A change here goes to both.
  torch::Tensor top = call("nearest", {vec, mask}).toTensor();
  const int64_t T = top.size(1);
  torch::Tensor top_all = torch::cat({top, RowForward::apply(top, &rows)}, 0);
  auto graph = call("rows", {vec, mask, index, top_all}).toTuple()->elements();
  int64_t width = graph[0].toTensor().size(1);
  MPI_Allreduce(MPI_IN_PLACE, &width, 1, MPI_INT64_T, MPI_MAX, world);
  auto prepared = call("prepare", {vec, graph[0], graph[1], graph[2], numbers_c, charge, spin, width})
                      .toTuple()
                      ->elements();
  torch::Tensor tokens = prepared[0].toTensor();
  torch::Tensor src_bias = prepared[1].toTensor();
  torch::Tensor desc = prepared[2].toTensor();
  const int64_t H = tokens.size(2);
  torch::Tensor desc_ghost = forward_rows(&rows, desc.reshape({nc, width * 4})).reshape({-1, width, 4});
  auto dst = call("destinations", {vec, mask, index, top_all, torch::cat({desc, desc_ghost}, 0)})
                 .toTuple()
                 ->elements();
  for (int64_t layer = 0; layer < info.num_layers; layer++) {
    torch::Tensor t = call("source_attention", {layer, tokens, src_bias}).toTensor();
    torch::Tensor ghost = RowForward::apply(t.reshape({nc, width * H}), &rows).reshape({-1, width, H});
    torch::Tensor out =
        call("destination_attention", {layer, torch::cat({t, ghost}, 0), dst[0], dst[1], dst[2]})
            .toTensor();
    tokens = RowReverseSum::apply(out.reshape({na, width * H}), &rows).reshape({nc, width, H});
    auto qkv = call("node_project", {layer, tokens}).toTuple()->elements();
    auto kv = AllGather::apply(qkv[1].toTensor(), qkv[2].toTensor(), &gather);
    tokens = call("node_finish", {layer, tokens, qkv[0], kv[0], kv[1]}).toTensor();
  }
  torch::Tensor energies = call("readout", {tokens, numbers_c, natoms}).toTensor();
  // + 0 x the candidate distances: on a rank that owns no atoms nothing else ties them to the
  // energy, and their exchange must run backward on every rank (its +inf padding left out)
  torch::Tensor e_rank =
      energies.sum() + 0.0 * torch::where(torch::isfinite(top_all), top_all, torch::zeros_like(top_all)).sum();
  auto grads = torch::autograd::grad({e_rank}, {vec}, {}, false, false, true);

  // each communication once per evaluation or per layer, forward and backward (docs/fairchem.md)
  const int64_t nl = info.num_layers, row_chunks = chunks(width * H, halo);
  const int64_t want_fwd = chunks(T, halo) + chunks(width * 4, halo) + 2 * nl * row_chunks;
  const int64_t want_rev = chunks(T, halo) + 2 * nl * row_chunks;
  if (rows.forward_calls - fwd0 != want_fwd || rows.reverse_calls - rev0 != want_rev ||
      gather.forward_calls - gather_fwd0 != nl || gather.backward_calls - gather_bwd0 != nl)
    throw std::runtime_error("internal error: the fairchem staged evaluation skipped a communication step (" +
                             std::to_string(rows.forward_calls - fwd0) + " of " + std::to_string(want_fwd) +
                             " forward and " + std::to_string(rows.reverse_calls - rev0) + " of " +
                             std::to_string(want_rev) + " reverse row communications)");
  return {energies, grads[0], torch::Tensor()};
}

}    // namespace allscaip
