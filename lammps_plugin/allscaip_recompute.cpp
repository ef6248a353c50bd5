/* ----------------------------------------------------------------------
   Local stage with recomputation in the backward pass (see allscaip_recompute.h)
------------------------------------------------------------------------- */

#include "allscaip_recompute.h"

#include <torch/csrc/autograd/autograd.h>

namespace allscaip {

namespace {

// the geometry Model::local reads, from the three tensors the Function carries
Model::Prepared geometry_of(const torch::Tensor &index, const torch::Tensor &bias,
                            const torch::Tensor &legendre_p)
{
  Model::Prepared g;
  g.index = index;
  g.bias = bias;
  g.legendre_p = legendre_p;
  return g;
}

}    // namespace

torch::autograd::variable_list RecomputedLocal::forward(
    torch::autograd::AutogradContext *ctx, torch::Tensor h_all, torch::Tensor edges,
    torch::Tensor bias, torch::Tensor legendre_p, torch::Tensor index, Model *model,
    int64_t layer)
{
  // autograd is off inside a Function's forward: nothing of the layer's graph is kept
  auto [h, edges_out] = model->local(layer, h_all, edges, geometry_of(index, bias, legendre_p));
  ctx->save_for_backward({h_all, edges, bias, legendre_p, index});
  ctx->saved_data["model"] = reinterpret_cast<int64_t>(model);
  ctx->saved_data["layer"] = layer;
  return {h, edges_out};
}

torch::autograd::variable_list RecomputedLocal::backward(torch::autograd::AutogradContext *ctx,
                                                         torch::autograd::variable_list grad_out)
{
  const auto saved = ctx->get_saved_variables();
  auto *model = reinterpret_cast<Model *>(ctx->saved_data["model"].toInt());
  const int64_t layer = ctx->saved_data["layer"].toInt();

  // fresh leaves for the inputs that carry a gradient, then the layer again with autograd on
  std::vector<torch::Tensor> inputs(4);
  std::vector<torch::Tensor> leaves;
  std::vector<size_t> leaf_slot;
  for (size_t i = 0; i < 4; i++) {
    const torch::Tensor &x = saved[i];
    if (x.defined() && x.is_floating_point() && x.numel() > 0) {
      inputs[i] = x.detach().requires_grad_(true);
      leaves.push_back(inputs[i]);
      leaf_slot.push_back(i);
    } else {
      inputs[i] = x;
    }
  }
  torch::autograd::variable_list grads_in(5);
  {
    torch::AutoGradMode enable(true);
    auto [h, edges_out] =
        model->local(layer, inputs[0], inputs[1], geometry_of(saved[4], inputs[2], inputs[3]));
    std::vector<torch::Tensor> outputs, seeds;
    const torch::Tensor produced[2] = {h, edges_out};
    for (size_t o = 0; o < 2; o++) {
      if (grad_out[o].defined() && produced[o].requires_grad()) {
        outputs.push_back(produced[o]);
        seeds.push_back(grad_out[o]);
      }
    }
    if (!outputs.empty() && !leaves.empty()) {
      auto g = torch::autograd::grad(outputs, leaves, seeds, false, false, true);
      for (size_t k = 0; k < leaf_slot.size(); k++) grads_in[leaf_slot[k]] = g[k];
    }
  }
  // index, model and layer take no gradient
  grads_in.push_back(torch::Tensor());
  grads_in.push_back(torch::Tensor());
  return grads_in;
}

}    // namespace allscaip
