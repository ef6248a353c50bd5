/* -*- c++ -*- ----------------------------------------------------------
   Communication steps of a domain-decomposed AllScAIP evaluation as torch
   autograd Functions, so that one backward pass through the staged model
   performs the matching reverse communications:

   GhostExchange  forward:  node states of owned atoms -> their ghost copies
                            (engine forward communication, e.g. LAMMPS
                            comm->forward_comm(pair))
                  backward: gradients held by ghost copies are summed into
                            their owners (engine reverse communication)

   AllGather      forward:  MPI_Allgatherv of the owned rows of the node
                            attention keys and values of every rank
                  backward: sum of every rank's gradient of the gathered
                            keys/values, each rank keeping its own rows
                            (MPI_Reduce_scatter == MPI_Allreduce + slice)

   Every rank, including one that owns no atoms, must run the same sequence
   of these calls; both Functions work with zero-row tensors.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_COMM_H
#define ALLSCAIP_COMM_H

#include <mpi.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/script.h>

#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

namespace allscaip {

// Implemented by the engine: a per-atom buffer of halo_width() doubles for
// every owned and ghost atom, and the two communications on it.
class HaloExchanger {
 public:
  virtual ~HaloExchanger() = default;
  virtual double *halo_buffer() = 0;           // [nall, halo_width()], row = atom index
  virtual int halo_width() const = 0;
  virtual int64_t halo_rows() const = 0;       // nall
  virtual void halo_forward() = 0;             // owner rows -> ghost rows
  virtual void halo_reverse() = 0;             // ghost rows summed into owner rows
};

// which buffer rows feed the owned (centre) node states and which are read as ghosts
struct GhostExchangeContext {
  HaloExchanger *halo = nullptr;
  std::vector<int> owned_atoms;    // buffer row of centre c
  std::vector<int> ghost_atoms;    // buffer row of gathered ghost g
  int64_t forward_calls = 0;
  int64_t reverse_calls = 0;
};

// rank layout of the all-gather (counts of owned centres per rank, in rank order)
struct GatherContext {
  MPI_Comm comm = MPI_COMM_NULL;
  int rank = 0;
  int nranks = 1;
  std::vector<int> counts;    // centres per rank
  std::vector<int> displs;    // first row of each rank in the gathered arrays
  int64_t total = 0;          // sum of counts
  int64_t forward_calls = 0;
  int64_t backward_calls = 0;

  // MPI_Allgather of the local count over comm (collective: every rank calls it)
  void setup(MPI_Comm world, int local_count);
};

// The rows of the all-gathered keys/values by atom tag: every rank's centre tags in rank order
// (MPI_Allgather of the counts, MPI_Allgatherv of the tags; collective) -> row_of_tag[tag] =
// first row of the owner rank + centre index, the order of AllGather. Used by the node encoding
// to find the key of a pair's atom j, owned by any rank.
void gather_rows_by_tag(MPI_Comm world, const std::vector<int64_t> &centre_tags,
                        std::unordered_map<int64_t, int64_t> &row_of_tag);

// The communications as plain functions (no autograd), for a manual reverse pass (a staged
// .pt2, docs/export.md) and as the bodies of the autograd Functions below:
//   ghost_exchange_forward  h_owned [Nc, H] -> ghost node states [Ng, H]
//   ghost_exchange_reverse  gradients of the ghost rows [Ng, H] -> summed into owners [Nc, H]
//   all_gather_forward      k, v [heads, Nc, d] -> K, V [heads, N, d] (ranks in order)
//   all_gather_reverse      dK, dV [heads, N, d] -> dk, dv [heads, Nc, d] (sum over ranks)
// Each counts its call in the context (forward_calls / reverse_calls / backward_calls).
torch::Tensor ghost_exchange_forward(const torch::Tensor &h_owned, GhostExchangeContext *gx);
torch::Tensor ghost_exchange_reverse(const torch::Tensor &grad_ghost, GhostExchangeContext *gx);
std::pair<torch::Tensor, torch::Tensor> all_gather_forward(const torch::Tensor &k,
                                                           const torch::Tensor &v, GatherContext *gc);
std::pair<torch::Tensor, torch::Tensor> all_gather_reverse(const torch::Tensor &gk,
                                                           const torch::Tensor &gv, GatherContext *gc);

class GhostExchange : public torch::autograd::Function<GhostExchange> {
 public:
  // h_owned [Nc, H] -> ghost node states [Ng, H] (same dtype/device as h_owned)
  static torch::Tensor forward(torch::autograd::AutogradContext *ctx, torch::Tensor h_owned,
                               GhostExchangeContext *gx);
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grad_out);
};

class AllGather : public torch::autograd::Function<AllGather> {
 public:
  // k, v [heads, Nc, d] -> (K, V) [heads, N, d] with ranks' rows in rank order
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext *ctx,
                                                torch::Tensor k, torch::Tensor v,
                                                GatherContext *gc);
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grad_out);
};

}    // namespace allscaip

#endif
