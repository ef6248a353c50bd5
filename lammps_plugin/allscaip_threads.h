/* -*- c++ -*- ----------------------------------------------------------
   libtorch's threads for the ranks of an MPI run.

   Intra-op threads: OMP_NUM_THREADS if set, otherwise the cores of this
   node divided by the ranks on this node (counted with
   MPI_Comm_split_type(..., MPI_COMM_TYPE_SHARED)). The TorchScript
   profiling graph executor stays off unless ALLSCAIP_JIT_OPTIMIZE is set
   (and not 0): it re-specialises for every new neighbour count and atom
   count, and was slower for these shape-changing calls.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_THREADS_H
#define ALLSCAIP_THREADS_H

#include <mpi.h>

#include <string>

namespace allscaip {

// Applies the settings above on this rank (collective over `world` unless OMP_NUM_THREADS is
// set) and returns what was chosen and why, for the log.
std::string configure_torch_threads(MPI_Comm world);

}    // namespace allscaip

#endif
