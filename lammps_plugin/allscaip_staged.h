/* -*- c++ -*- ----------------------------------------------------------
   Staged (domain-decomposed) evaluation of an AllScAIP model on one rank:
   the model's dd_* methods, layer by layer, with the ghost exchange and the
   all-gather of allscaip_comm.h between them, then dE_rank/dvec by autograd
   (whose backward pass runs the reverse communications).

   Every rank, including one that owns no atoms, must call it once per force
   evaluation: the communications inside are collective.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_STAGED_H
#define ALLSCAIP_STAGED_H

#include "allscaip_attention.h"
#include "allscaip_comm.h"
#include "allscaip_model.h"
#include "allscaip_neighbors.h"

#include <mpi.h>
#include <torch/script.h>

namespace allscaip {

struct StagedResult {
  torch::Tensor energies;    // [nc] per-centre energies (eV), model dtype and device
  torch::Tensor dE_dvec;     // [nc, kmax, 3] gradient of the rank's energy; undefined when
                             // the energy does not depend on any edge vector
  torch::Tensor dE_dpair;    // [P, 3] gradient with respect to the encoding pairs' vectors;
                             // undefined without a node encoding or without pairs
};

// the layout's host arrays as model tensors (copies: never aliasing the layout's storage):
// vec [nc, kmax, 3] in dtype, mask [nc, kmax] bool, index [nc, kmax] int64, numbers [na] int64
struct LayoutTensors {
  torch::Tensor vec, mask, index, numbers;
};
LayoutTensors layout_tensors(const NeighborLayout &layout, const torch::Device &device,
                             torch::ScalarType dtype);

// Runs the staged evaluation of `layout` (its centres and ghosts become the rows of the
// ghost exchange; ghost.halo must be set by the caller). `pairs`: the node encoding's pairs
// (required exactly when model.has_encoding(); their col indexes the all-gathered rows).
// how to trade memory for time (pair_style keywords attention_block and recompute)
struct StagedOptions {
  int64_t attention_block = DEFAULT_BLOCK_LOGITS;    // largest block of encoded attention
                                                     // logits held at once (allscaip_attention.h)
  bool recompute_local = false;    // recompute each layer's local stage in the backward
                                   // (allscaip_recompute.h)
};

// Throws std::runtime_error if the backward pass skipped a communication step.
StagedResult evaluate_staged(Model &model, const NeighborLayout &layout, int64_t charge,
                             int64_t spin, MPI_Comm world, GhostExchangeContext &ghost,
                             GatherContext &gather, const EncodingPairs *pairs = nullptr,
                             const StagedOptions &options = StagedOptions());

}    // namespace allscaip

#endif
