/* -*- c++ -*- ----------------------------------------------------------
   pair_style allscaip [charge Q] [spin S] [device cpu|cuda|cuda:N]
                       [attention_block B] [recompute yes|no] [min_distance R|model|off]
   pair_coeff * * model.pt El1 El2 ... (one element symbol or NULL per type)

   AllScAIP machine-learning potential from an allscaip-export TorchScript
   file. Multi-rank runs use LAMMPS domain decomposition: per layer the node
   states of ghost atoms are refreshed by a forward communication and the
   keys/values of the all-to-all node attention are gathered over all ranks;
   the backward pass performs the matching reverse communications. An
   AOTInductor .pt2 (whole-system call only) runs on several ranks by
   gathering the whole system on every rank: same numbers, no speed-up.
------------------------------------------------------------------------- */

#ifdef PAIR_CLASS
// clang-format off
PairStyle(allscaip,PairAllscaip);
// clang-format on
#else

#ifndef LMP_PAIR_ALLSCAIP_H
#define LMP_PAIR_ALLSCAIP_H

#include "pair.h"

#include "allscaip_comm.h"
#include "allscaip_fairchem_staged.h"
#include "allscaip_model.h"
#include "allscaip_neighbors.h"
#include "allscaip_staged.h"
#include "allscaip_staged_pt2.h"
#include "allscaip_units.h"

#include <memory>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

namespace LAMMPS_NS {

class PairAllscaip : public Pair, public allscaip::HaloExchanger {
 public:
  PairAllscaip(class LAMMPS *);
  ~PairAllscaip() noexcept override;

  void compute(int, int) override;
  void settings(int, char **) override;
  void coeff(int, char **) override;
  void init_style() override;
  double init_one(int, int) override;
  double memory_usage() override;

  int pack_forward_comm(int, int *, double *, int, int *) override;
  void unpack_forward_comm(int, int, double *) override;
  int pack_reverse_comm(int, int, double *) override;
  void unpack_reverse_comm(int, int *, double *) override;

  // allscaip::HaloExchanger: the per-atom node-state buffer and its communications
  double *halo_buffer() override { return halo; }
  int halo_width() const override { return halo_cols; }
  int64_t halo_rows() const override { return halo_nall; }
  void halo_forward() override;
  void halo_reverse() override;

 protected:
  std::unique_ptr<allscaip::Model> model;
  std::unique_ptr<allscaip::StagedPackage> staged_package;    // a staged .pt2 (dd_vjp)
  std::unique_ptr<allscaip::UnitConversion> units;
  std::string model_path;
  std::string device_name;
  int64_t charge, spin;
  allscaip::StagedOptions staged_options;    // attention_block, recompute
  double cutoff, cutoff_sq;
  double encoding_range_sq;    // node encoding: its range squared (0 without one)
  std::vector<int> type_species;    // LAMMPS type -> model element index, -1 for NULL
  std::vector<int64_t> type_z;      // LAMMPS type -> atomic number, 0 for NULL
  bool threads_configured;
  double min_distance_setting;    // pair_style min_distance: > 0 Angstrom, 0 off, < 0 the model's
  double min_distance;            // in use (Angstrom; 0 = no check)

  // halo buffer [nall, hidden] of node states / their gradients
  double *halo;
  int halo_cols;
  int64_t halo_nall, halo_nmax;    // rows in use, capacity in doubles

  // per-step work arrays, kept between steps to reuse their storage
  allscaip::NeighborLayout layout;
  allscaip::EncodingPairs encoding_pairs;
  std::unordered_map<int64_t, int64_t> gathered_row_of_tag;
  std::vector<int64_t> centre_tags;
  allscaip::GhostExchangeContext ghost_ctx;
  allscaip::GatherContext gather_ctx;
  allscaip::RowCommContext row_ctx;    // fairchem models

  void allocate();
  void configure_threads();
  void build_layout();
  void compute_staged();
  void compute_fairchem_staged();
  void prepare_halo();
  void compute_whole_system();
  void tally_energies(const torch::Tensor &energies, const torch::Tensor &total);
  void gather_centre_rows();
  void build_encoding_pairs();
  void tally_edge_gradients(const torch::Tensor &dE_dvec);
  void tally_pair_gradients(const torch::Tensor &dE_dpair);
  void tally_pair(int i, int j, const double *d, const double *g, double total[6]);
  void tally_global_virial(const double v[6], double scale);
  // pair_allscaip_checks.cpp: stop the run on atoms too close or non-finite results
  void check_min_distance();
  double closest_pair(tagint &a, tagint &b) const;
  void closest_pair_of_all_ranks(double &r, tagint ab[2], double send_below);
  void check_finite_staged(const torch::Tensor &energies, const torch::Tensor &dE_dvec,
                           const torch::Tensor &dE_dpair);
  void check_finite_whole(const torch::Tensor &energy, const torch::Tensor &forces,
                          const torch::Tensor &virial, const torch::Tensor &energies);
  bool any_rank_non_finite(bool finite_here);
  void stop_non_finite(const std::set<tagint> &ids);
};

}    // namespace LAMMPS_NS

#endif
#endif
