/* ----------------------------------------------------------------------
   Staged .pt2: forward stages, then the reverse pass by hand.
     prepare(vec; mask, index, Z)              -> bias, P, h, edges, pruned
     per layer l:
       h_all = [h ; ghost_exchange_forward(h)]
       h', edges, q, k, v = local_project_l(h_all, edges, P, bias; pruned)
       K, V = all_gather_forward(k, v)
       h = finish_l(h', q, K, V)
     e = readout(h, vec; mask, index, Z)
   reverse:
     g_h, g_vec = readout_vjp(.., ones)
     per layer l = L-1 .. 0:
       g_h', g_q, g_K, g_V = finish_l_vjp(h', q, K, V, g_h)
       g_k, g_v = all_gather_reverse(g_K, g_V)
       g_h_all, g_edges, g_P_l, g_bias_l = local_project_l_vjp(.., g_h', g_edges, g_q, g_k, g_v)
       g_h = g_h_all[:nc] + ghost_exchange_reverse(g_h_all[nc:])
     g_vec += prepare_vjp(vec; mask, index, Z, sum_l g_bias_l, sum_l g_P_l, g_h, g_edges)
   Without node attention the keys and values are not gathered (finish
   ignores them; their cotangents are zero).
   The layer loop exists five times (allscaip_staged.cpp names them all); a
   change here goes to all five.
------------------------------------------------------------------------- */

#include "allscaip_staged_pt2.h"

#include <algorithm>
#include <stdexcept>

namespace allscaip {

namespace {

// every stage of an L-layer package with its number of outputs (export/dd_vjp_reference.py
// stage_functions: prepare -> bias, P, h, edges, pruned; local_project -> h, edges, q, k, v;
// finish -> h; readout -> e; a VJP returns one cotangent per float input)
std::vector<std::pair<std::string, int>> stage_signatures(int num_layers)
{
  std::vector<std::pair<std::string, int>> stages{
      {"prepare", 5}, {"prepare_vjp", 1}, {"readout", 1}, {"readout_vjp", 2}};
  for (int l = 0; l < num_layers; ++l) {
    const std::string layer = std::to_string(l);
    stages.insert(stages.end(), {{"local_project_" + layer, 5},
                                 {"local_project_" + layer + "_vjp", 4},
                                 {"finish_" + layer, 1},
                                 {"finish_" + layer + "_vjp", 4}});
  }
  return stages;
}

// what a layer's reverse pass needs of its forward
struct SavedLayer {
  torch::Tensor h_all, edges_in;      // local_project inputs (besides P, bias, pruned)
  torch::Tensor h_local, q, k_all, v_all;    // finish inputs
};

}    // namespace

/* ---------------------------------------------------------------------- */

StagedPackage::StagedPackage(const std::string &path, const ModelInfo &info,
                             const torch::Device &device) :
    path_(path)
{
  const c10::DeviceIndex index = device.is_cuda() && device.has_index() ? device.index() : -1;
  for (const auto &[name, outputs] : stage_signatures(info.num_layers)) {
    try {
      stages_[name] = {
          std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, name, false, 1, index),
          outputs};
    } catch (const std::exception &e) {
      throw ModelError("staged AOTInductor package " + path + " has no loadable stage \"" + name +
                       "\" (" + first_line(e.what()) + "); the package is incomplete or was built "
                       "by an incompatible torch: re-export it with allscaip-export --format aoti "
                       "--staged");
    }
  }
}

StagedPackage::~StagedPackage() = default;

std::vector<torch::Tensor> StagedPackage::run(const std::string &name,
                                              const std::vector<torch::Tensor> &inputs)
{
  auto it = stages_.find(name);
  if (it == stages_.end()) throw std::runtime_error("internal error: no stage " + name);
  // the stages were compiled for contiguous inputs (export/aoti_stages.py compile_stage): the
  // compiled code assumes its example inputs' strides
  std::vector<torch::Tensor> in;
  in.reserve(inputs.size());
  for (const auto &t : inputs) in.push_back(t.contiguous());
  auto out = it->second.loader->run(in);
  if (static_cast<int>(out.size()) != it->second.outputs)
    throw std::runtime_error("stage " + name + " of " + path_ + " returned " +
                             std::to_string(out.size()) + " outputs instead of " +
                             std::to_string(it->second.outputs) +
                             "; re-export the package with allscaip-export --format aoti --staged");
  return out;
}

/* ---------------------------------------------------------------------- */

StagedResult evaluate_staged_pt2(StagedPackage &package, const ModelInfo &info,
                                 const NeighborLayout &layout, const torch::Device &device,
                                 torch::ScalarType dtype, MPI_Comm world,
                                 GhostExchangeContext &ghost, GatherContext &gather)
{
  torch::NoGradGuard no_grad;    // a package has no autograd; the reverse pass is below
  const int64_t nc = layout.num_centres();
  const int num_layers = info.num_layers;
  ghost.owned_atoms = layout.centres;
  ghost.ghost_atoms = layout.ghosts;
  if (info.node_attention) gather.setup(world, static_cast<int>(nc));    // collective
  const int64_t halo_fwd0 = ghost.forward_calls, halo_rev0 = ghost.reverse_calls;
  const int64_t gather_fwd0 = gather.forward_calls, gather_bwd0 = gather.backward_calls;

  const auto [vec, mask, index, numbers] = layout_tensors(layout, device, dtype);
  if (nc == 0) {
    // the compiled stages need a centre (sizes are compiled from 1 up): a rank without one runs
    // only its communications, with empty node states and zero gradients for its ghosts
    auto opts = torch::TensorOptions().dtype(dtype).device(device);
    const int64_t heads = std::max(info.heads, 1), head_dim = info.hidden / heads;
    for (int l = 0; l < num_layers; ++l) {
      ghost_exchange_forward(torch::zeros({0, info.hidden}, opts), &ghost);
      if (info.node_attention) {
        auto none = torch::zeros({heads, 0, head_dim}, opts);
        all_gather_forward(none, none, &gather);
      }
    }
    for (int l = num_layers - 1; l >= 0; --l) {
      if (info.node_attention) {
        auto zero = torch::zeros({heads, gather.total, head_dim}, opts);
        all_gather_reverse(zero, zero, &gather);
      }
      const int64_t ng = static_cast<int64_t>(layout.ghosts.size());
      ghost_exchange_reverse(torch::zeros({ng, info.hidden}, opts), &ghost);
    }
    return {torch::zeros({0}, opts), torch::zeros_like(vec), torch::Tensor()};
  }
  const std::vector<torch::Tensor> constants{mask, index, numbers};
  auto with = [](std::vector<torch::Tensor> a, const std::vector<torch::Tensor> &b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };

  // ---- forward, keeping each stage's inputs for its VJP
  auto prepared = package.run("prepare", with({vec}, constants));
  const torch::Tensor bias = prepared[0], legendre_p = prepared[1], pruned = prepared[4];
  torch::Tensor h = prepared[2], edges = prepared[3];
  std::vector<SavedLayer> saved(num_layers);
  for (int l = 0; l < num_layers; ++l) {
    const std::string layer = std::to_string(l);
    SavedLayer &s = saved[l];
    s.h_all = torch::cat({h, ghost_exchange_forward(h, &ghost)}, 0);
    s.edges_in = edges;
    auto out = package.run("local_project_" + layer, {s.h_all, edges, legendre_p, bias, pruned});
    s.h_local = out[0];
    edges = out[1];
    s.q = out[2];
    if (info.node_attention)
      std::tie(s.k_all, s.v_all) = all_gather_forward(out[3], out[4], &gather);
    else
      std::tie(s.k_all, s.v_all) = std::make_pair(out[3], out[4]);
    h = package.run("finish_" + layer, {s.h_local, s.q, s.k_all, s.v_all})[0];
  }
  const torch::Tensor energies = package.run("readout", with({h, vec}, constants))[0];

  // ---- reverse pass: the VJPs in reverse order, communications reversed
  auto readout_grad =
      package.run("readout_vjp", with(with({h, vec}, constants), {torch::ones_like(energies)}));
  torch::Tensor g_h = readout_grad[0], g_vec = readout_grad[1];
  torch::Tensor g_edges = torch::zeros_like(edges);
  torch::Tensor g_p = torch::zeros_like(legendre_p), g_bias = torch::zeros_like(bias);
  for (int l = num_layers - 1; l >= 0; --l) {
    const std::string layer = std::to_string(l);
    const SavedLayer &s = saved[l];
    auto fin = package.run("finish_" + layer + "_vjp", {s.h_local, s.q, s.k_all, s.v_all, g_h});
    torch::Tensor g_k = fin[2], g_v = fin[3];
    if (info.node_attention) std::tie(g_k, g_v) = all_gather_reverse(fin[2], fin[3], &gather);
    auto local = package.run("local_project_" + layer + "_vjp",
                             {s.h_all, s.edges_in, legendre_p, bias, pruned, fin[0], g_edges, fin[1],
                              g_k, g_v});
    g_edges = local[1];
    g_p = g_p + local[2];
    g_bias = g_bias + local[3];
    g_h = local[0].slice(0, 0, nc) + ghost_exchange_reverse(local[0].slice(0, nc), &ghost);
  }
  g_vec = g_vec +
          package.run("prepare_vjp", with(with({vec}, constants), {g_bias, g_p, g_h, g_edges}))[0];

  // every rank must have run each communication once per layer, forward and reverse
  const int64_t ng = info.node_attention ? num_layers : 0;
  if (ghost.forward_calls - halo_fwd0 != num_layers ||
      ghost.reverse_calls - halo_rev0 != num_layers || gather.forward_calls - gather_fwd0 != ng ||
      gather.backward_calls - gather_bwd0 != ng)
    throw std::runtime_error(
        "internal error: the staged .pt2 reverse pass skipped a communication step");
  return {energies, g_vec, torch::Tensor()};
}

}    // namespace allscaip
