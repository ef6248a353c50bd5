/* ----------------------------------------------------------------------
   pair_style allscaip: the evaluation of a converted fairchem AllScAIP
   (PairAllscaip member functions; the rest is in pair_allscaip.cpp)
------------------------------------------------------------------------- */

#include "pair_allscaip.h"

#include "atom.h"

using namespace LAMMPS_NS;

/* ----------------------------------------------------------------------
   converted fairchem AllScAIP (metadata staged_interface "fairchem"): its
   own stages, which move edge tokens between ranks (docs/fairchem.md,
   "Multi-rank evaluation"); the one path for 1..P ranks
------------------------------------------------------------------------- */

void PairAllscaip::compute_fairchem_staged()
{
  build_layout();
  prepare_halo();
  row_ctx.halo = this;
  check_min_distance();
  auto result = allscaip::evaluate_fairchem_staged(*model, layout, charge, spin, atom->natoms, world,
                                                   row_ctx, gather_ctx);
  check_finite_staged(result.energies, result.dE_dvec, result.dE_dpair);
  tally_energies(result.energies, torch::Tensor());
  if (result.dE_dvec.defined() && layout.num_centres() > 0) tally_edge_gradients(result.dE_dvec);
}
