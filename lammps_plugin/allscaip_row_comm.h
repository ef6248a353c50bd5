/* -*- c++ -*- ----------------------------------------------------------
   Row communications of the staged fairchem AllScAIP evaluation
   (docs/fairchem.md, "Multi-rank evaluation") as torch autograd Functions,
   on the engine's halo buffer of halo_width() doubles per atom; rows wider
   than that travel in column chunks (one engine communication per chunk):

   RowForward     forward:  rows [Nc, C] of the owned atoms -> the same rows
                            of their ghost copies [Ng, C] (forward comm)
                  backward: gradients of the ghost rows summed into their
                            owners (reverse comm)

   RowReverseSum  forward:  rows [Nc + Ng, C] of owned atoms and ghosts ->
                            owned rows plus the ghost rows of every copy of
                            each owned atom, summed (reverse comm)
                  backward: the owned rows' gradient to the owned rows and,
                            by forward comm, to every ghost copy

   Every rank, including one that owns no atoms, must run the same sequence
   of calls with the same column count C (the halo communications are
   collective over neighbouring ranks).
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_ROW_COMM_H
#define ALLSCAIP_ROW_COMM_H

#include "allscaip_comm.h"

#include <torch/csrc/autograd/custom_function.h>
#include <torch/script.h>

#include <cstdint>
#include <vector>

namespace allscaip {

struct RowCommContext {
  HaloExchanger *halo = nullptr;
  std::vector<int> owned_atoms;    // buffer row of owned row c
  std::vector<int> ghost_atoms;    // buffer row of ghost row g
  int64_t forward_calls = 0;       // RowForward forward + RowReverseSum backward
  int64_t reverse_calls = 0;       // RowForward backward + RowReverseSum forward
};

// owned rows [Nc, C] -> ghost rows [Ng, C] (forward comm); C columns in chunks of halo_width()
torch::Tensor forward_rows(RowCommContext *rc, const torch::Tensor &owned);
// all rows [Nc + Ng, C] -> owned rows [Nc, C] with the ghost rows summed in (reverse comm)
torch::Tensor reverse_sum_rows(RowCommContext *rc, const torch::Tensor &all);

class RowForward : public torch::autograd::Function<RowForward> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext *ctx, torch::Tensor owned,
                               RowCommContext *rc);
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grad_out);
};

class RowReverseSum : public torch::autograd::Function<RowReverseSum> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext *ctx, torch::Tensor all,
                               RowCommContext *rc);
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grad_out);
};

}    // namespace allscaip

#endif
