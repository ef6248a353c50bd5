/* -*- c++ -*- ----------------------------------------------------------
   libtorch's threads and GPUs for the ranks of an MPI run.

   Intra-op threads: OMP_NUM_THREADS if set, otherwise the cores of this
   node divided by the ranks on this node (counted with
   MPI_Comm_split_type(..., MPI_COMM_TYPE_SHARED)). The TorchScript
   profiling graph executor stays off unless ALLSCAIP_JIT_OPTIMIZE is set
   (and not 0): it re-specialises for every new neighbour count and atom
   count, and was slower for these shape-changing calls.

   GPUs: `device cuda` without an index gives each rank GPU (node-local
   rank mod visible GPUs), so one rank per GPU on each node is the default.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_THREADS_H
#define ALLSCAIP_THREADS_H

#include <mpi.h>

#include <string>

namespace allscaip {

// Applies the settings above on this rank (collective over `world` unless OMP_NUM_THREADS is
// set) and returns what was chosen and why, for the log.
std::string configure_torch_threads(MPI_Comm world);

// This rank's index among the ranks on its node, and how many there are (collective over `world`).
struct NodeRanks {
  int local_rank;
  int ranks_on_node;
};
NodeRanks node_ranks(MPI_Comm world);

// The device a rank uses for `device` as the user gave it: "cuda" becomes "cuda:K" with
// K = node-local rank mod `gpus`; anything else is returned unchanged.
std::string device_for_rank(const std::string &device, int local_rank, int gpus);

}    // namespace allscaip

#endif
