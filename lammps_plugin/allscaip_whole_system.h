/* -*- c++ -*- ----------------------------------------------------------
   Whole-system evaluation of an AllScAIP model on 1..P ranks, for models
   without the staged interface (distance_bias models and AOTInductor
   packages): every rank all-gathers the centres (owned atoms of mapped
   types: positions, atomic numbers), their edges and, with a node encoding,
   their pairs, with each ghost neighbour written as its owned image plus an
   integer lattice shift, then runs the model's whole-system call on the
   whole system and keeps the rows of its own centres. Results are
   independent of the rank count, but every rank computes the whole system:
   no parallel speed-up (docs/communication.md, "Whole-system models").
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_WHOLE_SYSTEM_H
#define ALLSCAIP_WHOLE_SYSTEM_H

#include "allscaip_model.h"
#include "allscaip_neighbors.h"

#include "lmptype.h"

#include <mpi.h>

#include <torch/script.h>

#include <cstdint>
#include <unordered_map>
#include <vector>

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
  torch::Tensor energy;      // [] the whole system's (eV), the same on every rank
  torch::Tensor forces;      // [nc, 3] on this rank's centres (eV/A)
  torch::Tensor virial;      // [3, 3] the whole system's W = -dE/dstrain (eV), row-major
  torch::Tensor energies;    // [nc] per-centre energies of this rank's centres (eV)
  int64_t system_atoms = 0;  // atoms of the whole system (all ranks' centres)
};

// integer lattice shift S with xj = xo + S @ cell (cell rows a, b, c lower triangular; hm is
// LAMMPS Domain::h: xprd, yprd, zprd, yz, xz, xy), appended to shifts as three doubles
void append_lattice_shift(const double *xj, const double *xo, const double *hm,
                          std::vector<double> &shifts);

// Collective over `world`: every rank calls it once per force evaluation. row_of_tag: atom tag
// -> row of the whole system, every rank's centres in rank order (gather_rows_by_tag,
// allscaip_comm.h). pairs: the node encoding's pairs (EncodingPairs::build with that map),
// required for a model with a node encoding, ignored otherwise. Throws std::runtime_error if a
// neighbour's tag has no row.
WholeSystemResult evaluate_whole_system(Model &model, const NeighborLayout &layout,
                                        const BoxAtoms &atoms, int64_t charge, int64_t spin,
                                        MPI_Comm world,
                                        const std::unordered_map<int64_t, int64_t> &row_of_tag,
                                        const EncodingPairs *pairs = nullptr);

}    // namespace allscaip

#endif
