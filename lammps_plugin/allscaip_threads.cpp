/* ----------------------------------------------------------------------
   libtorch threads and graph executor settings for an MPI run.
------------------------------------------------------------------------- */

#include "allscaip_threads.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <algorithm>
#include <cstdlib>
#include <thread>

namespace allscaip {

std::string configure_torch_threads(MPI_Comm world)
{
  const char *opt = std::getenv("ALLSCAIP_JIT_OPTIMIZE");
  const bool optimize = opt && *opt && std::string(opt) != "0";
  torch::jit::setGraphExecutorOptimize(optimize);
  const char *env = std::getenv("OMP_NUM_THREADS");
  if (env && *env)
    return "torch uses " + std::to_string(at::get_num_threads()) +
        " thread(s) per rank (OMP_NUM_THREADS)";

  const int ranks_on_node = node_ranks(world).ranks_on_node;
  const int cores = std::max(1u, std::thread::hardware_concurrency());
  const int nthreads = std::max(1, cores / std::max(1, ranks_on_node));
  at::set_num_threads(nthreads);
  return "torch uses " + std::to_string(nthreads) + " thread(s) per rank (" +
      std::to_string(cores) + " cores, " + std::to_string(ranks_on_node) +
      " rank(s) on this node; set OMP_NUM_THREADS to override)";
}

NodeRanks node_ranks(MPI_Comm world)
{
  int me = 0;
  MPI_Comm_rank(world, &me);
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, me, MPI_INFO_NULL, &node);
  NodeRanks out{0, 1};
  MPI_Comm_rank(node, &out.local_rank);
  MPI_Comm_size(node, &out.ranks_on_node);
  MPI_Comm_free(&node);
  return out;
}

std::string device_for_rank(const std::string &device, int local_rank, int gpus)
{
  if (device != "cuda" || gpus < 1) return device;
  return "cuda:" + std::to_string(local_rank % gpus);
}

}    // namespace allscaip
