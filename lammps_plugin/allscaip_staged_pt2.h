/* -*- c++ -*- ----------------------------------------------------------
   Staged (domain-decomposed) evaluation of a staged AOTInductor package
   (.pt2 with metadata staged_interface "dd_vjp", docs/export.md, "The
   staged .pt2") on one rank. A package has no autograd, so it holds every
   stage between two communications twice: the forward function and its
   vector-Jacobian product (VJP). This file runs the forward stages with the
   ghost exchange and the all-gather between them, keeps each stage's
   inputs, and then the reverse pass by hand: the VJPs from the last layer
   to the first with the reverse communications between them. The
   executable specification is export/dd_vjp_reference.py (dd_vjp_evaluate);
   the communications are the plain functions of allscaip_comm.h.

   Every rank, including one that owns no atoms, must call it once per force
   evaluation: the communications inside are collective.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_STAGED_PT2_H
#define ALLSCAIP_STAGED_PT2_H

#include "allscaip_comm.h"
#include "allscaip_model_info.h"
#include "allscaip_neighbors.h"
#include "allscaip_staged.h"

#include <mpi.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

namespace allscaip {

// The compiled stages of a staged package, by name: prepare, local_project_<l>, finish_<l>,
// readout and <name>_vjp for each (2 (2L + 2) models in one archive).
class StagedPackage {
 public:
  // throws ModelError: a stage missing from the archive, or a package built for another device
  StagedPackage(const std::string &path, const ModelInfo &info, const torch::Device &device);
  ~StagedPackage();

  // run one stage; throws std::runtime_error if it returns another number of outputs than
  // its signature (stage_signatures in the .cpp)
  std::vector<torch::Tensor> run(const std::string &name, const std::vector<torch::Tensor> &inputs);

 private:
  struct Stage {
    std::unique_ptr<torch::inductor::AOTIModelPackageLoader> loader;
    int outputs = 0;
  };
  std::string path_;
  std::map<std::string, Stage> stages_;
};

// Runs the staged evaluation of `layout` with the package's stages (ghost.halo must be set by
// the caller). Throws std::runtime_error if a communication step was skipped.
StagedResult evaluate_staged_pt2(StagedPackage &package, const ModelInfo &info,
                                 const NeighborLayout &layout, const torch::Device &device,
                                 torch::ScalarType dtype, MPI_Comm world,
                                 GhostExchangeContext &ghost, GatherContext &gather);

}    // namespace allscaip

#endif
