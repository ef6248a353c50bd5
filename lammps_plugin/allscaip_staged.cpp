/* ----------------------------------------------------------------------
   Staged (domain-decomposed) evaluation on one rank (owned atoms = "centres"):
     vec[c,k]  = x[j] - x[i] for the neighbours j (owned or ghost) of each
                 centre i within the model cutoff (leaf tensor)
     dd_prepare(vec, mask, index, numbers_all, charge, spin) -> h, edges
     per layer:  h_all = [h ; GhostExchange(h)]        forward comm
                 h, edges = dd_local(...)
                 q, k, v = dd_global_project(h)
                 K, V = AllGather(k, v)                 MPI_Allgatherv
                 h = dd_global_finish(h, q, K, V)
     e = dd_readout(h) + dd_core(vec, ...);  E_rank = sum(e)
   dE_rank/dvec by autograd; its backward runs the reverse communications.
   With a node encoding: pair_vec[p] = x_j - x_i for the encoding pairs (leaf
   tensor), and per layer
     bias = dd_encoding_pair_bias(pair_vec)
     o    = BlockedPairBiasAttention(q, K, V, bias, pair_row, pair_col)
     h    = dd_global_finish_heads(h, o)
   instead of dd_global_finish (exports without the two methods: basis =
   dd_encoding_basis(pair_vec) once and one call of dd_global_finish_encoded
   per layer, whose logits are whole); dE_rank/dpair_vec comes back with
   dE_rank/dvec.
   recompute yes: each layer's local stage runs without autograd and again in
   the backward (RecomputedLocal), so one layer's activations live at a time.
------------------------------------------------------------------------- */

#include "allscaip_staged.h"

#include "allscaip_attention.h"
#include "allscaip_recompute.h"

#include <torch/csrc/autograd/autograd.h>

#include <stdexcept>
#include <string>

namespace allscaip {

namespace {

// from_blob takes a non-const pointer; the tensors made from it are copied at once
template <typename T> void *host(const std::vector<T> &v)
{
  return const_cast<void *>(static_cast<const void *>(v.data()));
}

}    // namespace

LayoutTensors layout_tensors(const NeighborLayout &layout, const torch::Device &device,
                             torch::ScalarType dtype)
{
  const int64_t nc = layout.num_centres(), na = layout.num_rows(), kmax = layout.kmax;
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  // .to(..., copy = true) never aliases the layout's storage
  return {torch::from_blob(host(layout.vec), {nc, kmax, 3}, f64).to(device, dtype, false, true),
          torch::from_blob(host(layout.mask), {nc, kmax}, torch::kUInt8)
              .to(device, torch::kBool, false, true),
          torch::from_blob(host(layout.index), {nc, kmax}, i64).to(device, torch::kInt64, false, true),
          torch::from_blob(host(layout.numbers), {na}, i64).to(device, torch::kInt64, false, true)};
}

/* ---------------------------------------------------------------------- */

StagedResult evaluate_staged(Model &model, const NeighborLayout &layout, int64_t charge,
                             int64_t spin, MPI_Comm world, GhostExchangeContext &ghost,
                             GatherContext &gather, const EncodingPairs *pairs,
                             const StagedOptions &options)
{
  const ModelInfo &info = model.info();
  const torch::Device device = model.device();
  const torch::ScalarType dtype = model.dtype();
  const int64_t nc = layout.num_centres();

  ghost.owned_atoms = layout.centres;
  ghost.ghost_atoms = layout.ghosts;
  if (info.node_attention) gather.setup(world, static_cast<int>(nc));    // collective

  auto [vec, mask, index, numbers] = layout_tensors(layout, device, dtype);
  vec.requires_grad_(true);

  const bool encoded = model.has_encoding();
  if (encoded && (pairs == nullptr || !info.node_attention))
    throw std::runtime_error("internal error: a node-encoding model needs its pairs and node attention");
  torch::Tensor pair_vec, pair_row, pair_col, basis;
  if (encoded) {
    const int64_t np = pairs->size();
    auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
    auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    pair_vec = torch::from_blob(host(pairs->vec), {np, 3}, f64)
                   .to(device, dtype, false, true)
                   .requires_grad_(true);
    pair_row = torch::from_blob(host(pairs->row), {np}, i64).to(device, torch::kInt64, false, true);
    pair_col = torch::from_blob(host(pairs->col), {np}, i64).to(device, torch::kInt64, false, true);
  }

  const int64_t halo_fwd0 = ghost.forward_calls, halo_rev0 = ghost.reverse_calls;
  const int64_t gather_fwd0 = gather.forward_calls, gather_bwd0 = gather.backward_calls;

  // The layer loop is the plugin's contract with the model and exists five times: here
  // (under MPI), in allscaip/model/allscaip.py AllScAIP.forward (whole systems), in
  // export/dd_reference.py (the staged methods in Python), in export/dd_vjp_reference.py
  // (the same stages with a manual reverse pass) and in allscaip_staged_pt2.cpp (that pass for
  // a staged .pt2 under MPI). A change here goes to all five.
  auto geometry = model.prepare(vec, mask, index, numbers, charge, spin);
  torch::Tensor h = geometry.h;
  torch::Tensor edges = geometry.edges;
  if (encoded && !model.has_split_encoding()) basis = model.encoding_basis(pair_vec);
  for (int64_t layer = 0; layer < info.num_layers; layer++) {
    torch::Tensor ghost_h = GhostExchange::apply(h, &ghost);
    if (options.recompute_local) {
      auto out = RecomputedLocal::apply(torch::cat({h, ghost_h}, 0), edges, geometry.bias,
                                        geometry.legendre_p, geometry.index, &model, layer);
      h = out[0];
      edges = out[1];
    } else {
      std::tie(h, edges) = model.local(layer, torch::cat({h, ghost_h}, 0), edges, geometry);
    }
    auto [q, k, v] = model.global_project(layer, h);
    if (info.node_attention) {
      auto kv = AllGather::apply(k, v, &gather);
      if (encoded && model.has_split_encoding()) {
        const int64_t block_rows = attention_block_rows(q.size(0), kv[0].size(1), options.attention_block);
        torch::Tensor o =
            BlockedPairBiasAttention::apply(q, kv[0], kv[1], model.encoding_pair_bias(layer, pair_vec),
                                            pair_row, pair_col, block_rows);
        h = model.global_finish_heads(layer, h, o);
      } else if (encoded) {
        h = model.global_finish_encoded(layer, h, q, kv[0], kv[1], basis, pair_row, pair_col);
      } else
        h = model.global_finish(layer, h, q, kv[0], kv[1]);
    } else {
      h = model.global_finish(layer, h, q, k, v);    // node FFN only; keys/values unused
    }
  }
  torch::Tensor energies = model.readout(h, numbers.slice(0, 0, nc));
  if (model.has_core()) energies = energies + model.core(vec, mask, index, numbers);
  torch::Tensor e_rank = energies.sum();
  std::vector<torch::Tensor> leaves{vec};
  if (encoded) leaves.push_back(pair_vec);
  auto grads = torch::autograd::grad({e_rank}, leaves, {}, false, false, true);

  // every rank must have run each communication once per layer, forward and backward (the
  // backward order is fixed by the data dependencies layer L-1 -> 0; see docs/lammps.md)
  const int64_t nl = info.num_layers, ng = info.node_attention ? nl : 0;
  if (ghost.forward_calls - halo_fwd0 != nl || ghost.reverse_calls - halo_rev0 != nl ||
      gather.forward_calls - gather_fwd0 != ng || gather.backward_calls - gather_bwd0 != ng)
    throw std::runtime_error(
        "internal error: the autograd pass skipped a communication step (" +
        std::to_string(ghost.reverse_calls - halo_rev0) + " ghost exchanges and " +
        std::to_string(gather.backward_calls - gather_bwd0) + " all-gathers backward for " +
        std::to_string(nl) + " layers)");

  return {energies, grads[0], encoded ? grads[1] : torch::Tensor()};
}

}    // namespace allscaip
