/* -*- c++ -*- ----------------------------------------------------------
   Whole-system evaluation of an AllScAIP model on one rank, for models
   without domain decomposition support (distance_bias models and
   AOTInductor packages): the owned atoms as the system, each ghost
   neighbour of the neighbour layout as its owned image plus an integer
   lattice shift, through the model's whole-system call. A model with a node
   encoding gets its pairs the same way: each pair (centre i, atom j within the
   range) as (i, owned image of j, shift).
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_WHOLE_SYSTEM_H
#define ALLSCAIP_WHOLE_SYSTEM_H

#include "allscaip_model.h"
#include "allscaip_neighbors.h"

#include "lmptype.h"

#include <torch/script.h>

namespace allscaip {

// the simulation box and atoms as LAMMPS holds them
struct BoxAtoms {
  double *const *x;         // positions of owned and ghost atoms
  const LAMMPS_NS::tagint *tag;    // atom IDs (a ghost has the ID of its owned image)
  int nlocal;
  const double *h;          // LAMMPS Domain::h: xprd, yprd, zprd, yz, xz, xy
  const int *periodicity;   // [3]
};

struct WholeSystemResult {
  torch::Tensor energy;      // [] (eV)
  torch::Tensor forces;      // [nc, 3] on the centres (eV/A)
  torch::Tensor virial;      // [3, 3] W = -dE/dstrain (eV), row-major
  torch::Tensor energies;    // [nc] per-centre energies (eV)
};

// Throws std::runtime_error if a ghost neighbour has no owned image (needs one rank).
// pairs: the node encoding's pairs (EncodingPairs::build with rows and columns = centres, as
// one rank gathers them), required for a model with a node encoding, ignored otherwise.
WholeSystemResult evaluate_whole_system(Model &model, const NeighborLayout &layout,
                                        const BoxAtoms &atoms, int64_t charge, int64_t spin,
                                        const EncodingPairs *pairs = nullptr);

}    // namespace allscaip

#endif
