/* -*- c++ -*- ----------------------------------------------------------
   The local (neighbour) stage of one layer with its activations recomputed
   in the backward pass (activation checkpointing), for pair_style allscaip
   recompute yes.

   Forward: Model::local without autograd, keeping only the layer's inputs
   (node states of centres and ghosts, edge states, and the geometry's
   attention bias and Legendre products). Backward: the same call again with
   autograd on, then the gradients of its inputs. Only one layer's graph is
   alive at a time, at the price of a second forward of the local stage in
   every evaluation; the numbers are the same to rounding.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_RECOMPUTE_H
#define ALLSCAIP_RECOMPUTE_H

#include "allscaip_model.h"

#include <torch/torch.h>

namespace allscaip {

class RecomputedLocal : public torch::autograd::Function<RecomputedLocal> {
 public:
  // -> {h_c [Nc, H], edges [E, H]} as Model::local(layer, h_all, edges, {index, bias,
  // legendre_p}); gradients flow to h_all, edges, bias and legendre_p
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext *ctx,
                                                torch::Tensor h_all, torch::Tensor edges,
                                                torch::Tensor bias, torch::Tensor legendre_p,
                                                torch::Tensor index, Model *model, int64_t layer);
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grad_out);
};

}    // namespace allscaip

#endif
