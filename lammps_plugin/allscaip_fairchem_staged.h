/* -*- c++ -*- ----------------------------------------------------------
   Staged (domain-decomposed) evaluation of a converted fairchem AllScAIP
   (md: no frequency or sinc mask) on one rank: the methods of the export's
   submodule "stages" (allscaip/model/fairchem_staged.py) with the row
   communications of allscaip_row_comm.h and the all-gather of
   allscaip_comm.h between them; executable specification
   export/fairchem_dd_reference.py, design docs/fairchem.md ("Multi-rank
   evaluation").

   Every rank, including one that owns no atoms, must call it once per force
   evaluation: the communications inside are collective.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_FAIRCHEM_STAGED_H
#define ALLSCAIP_FAIRCHEM_STAGED_H

#include "allscaip_comm.h"
#include "allscaip_model.h"
#include "allscaip_neighbors.h"
#include "allscaip_row_comm.h"
#include "allscaip_staged.h"

#include <mpi.h>

namespace allscaip {

// Runs the staged fairchem evaluation of `layout` (its centres and ghosts become the rows of
// the row communications; rows.halo must be set by the caller); natoms: atoms of the whole
// system (the readout spreads fairchem's energy mean over them). Result as evaluate_staged
// (dE_dpair undefined). Throws std::runtime_error if a communication step was skipped.
StagedResult evaluate_fairchem_staged(Model &model, const NeighborLayout &layout, int64_t charge,
                                      int64_t spin, int64_t natoms, MPI_Comm world,
                                      RowCommContext &rows, GatherContext &gather);

}    // namespace allscaip

#endif
