/* ----------------------------------------------------------------------
   pair_style allscaip: the checks that stop a run instead of letting a bad
   evaluation pass silently.
     check_min_distance: two atoms of the rank's neighbour layout closer than
       min_distance (from the model's metadata, or the pair_style keyword;
       "min_distance off" skips it), before the model runs;
     check_finite_*: NaN or Inf in the model's energies or gradients, after
       it ran and before anything is tallied. The fast path is one sum per
       tensor (a NaN or Inf anywhere makes the sum non-finite) and one
       transfer to the host; only a failed check looks for the atoms. The
       gradient tensors are checked as a whole, so a non-finite gradient on
       an edge to a ghost atom stops the rank that computed it.
   Both are collective so that every rank takes the same branch and rank 0
   prints the message (error->all): too close is one MINLOC all-reduce per
   step, non-finite one integer all-reduce; only a failed check gathers the
   atom IDs.
------------------------------------------------------------------------- */

#include "pair_allscaip.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "update.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

using namespace LAMMPS_NS;

namespace {

// atom IDs named in a message (the rest are counted)
constexpr size_t kNamedAtoms = 8;

std::string id_list(const std::set<tagint> &ids)
{
  std::string out;
  size_t n = 0;
  for (tagint id : ids) {
    if (n == kNamedAtoms) break;
    out += (n ? ", " : "") + std::to_string(id);
    n++;
  }
  if (ids.size() > kNamedAtoms) out += " and " + std::to_string(ids.size() - kNamedAtoms) + " more";
  return out;
}

// sum of every tensor's sum in float64: finite exactly when no element is NaN or Inf
// (short of an overflow of the sum itself); one host transfer
bool all_finite(std::initializer_list<const torch::Tensor *> tensors)
{
  torch::Tensor acc;
  for (const torch::Tensor *t : tensors) {
    if (!t->defined() || t->numel() == 0) continue;
    torch::Tensor s = t->detach().sum().to(torch::kFloat64);
    acc = acc.defined() ? acc + s : s;
  }
  return !acc.defined() || std::isfinite(acc.item<double>());
}

// a [rows, width] float64 host copy of t
torch::Tensor host_rows(const torch::Tensor &t, int64_t rows)
{
  return t.detach().to(torch::kCPU, torch::kFloat64).contiguous().reshape({rows, -1});
}

bool row_finite(const torch::Tensor &rows, int64_t r)
{
  const int64_t w = rows.size(1);
  const double *p = rows.data_ptr<double>() + r * w;
  for (int64_t m = 0; m < w; m++)
    if (!std::isfinite(p[m])) return false;
  return true;
}

}    // namespace

/* ----------------------------------------------------------------------
   pairs (centre i, neighbour j within the cutoff) closer than min_distance
------------------------------------------------------------------------- */

void PairAllscaip::check_min_distance()
{
  if (!(min_distance > 0.0)) return;
  double r;
  tagint ab[2];
  closest_pair_of_all_ranks(r, ab, min_distance);
  if (!(r < min_distance)) return;
  error->all(FLERR,
             "pair_style allscaip: atoms {} and {} are {:.4g} A apart at step {}, closer than "
             "min_distance {:.4g} A ({}); the model cannot describe atoms this close. Check the "
             "input structure for duplicated or overlapping atoms (e.g. a hydrogen placed on its "
             "parent atom); in MD, reduce the timestep. To go on anyway: pair_style allscaip "
             "min_distance off (or min_distance R in Angstrom)",
             ab[0], ab[1], r, update->ntimestep, min_distance,
             min_distance_setting > 0.0 ? "set by pair_style allscaip min_distance"
                                        : "from the model: a fraction of the shortest contact in "
                                          "its training data");
}

/* ----------------------------------------------------------------------
   collective: the closest pair over all ranks (one MINLOC all-reduce; its
   IDs travel to every rank only when it is closer than send_below)
------------------------------------------------------------------------- */

void PairAllscaip::closest_pair_of_all_ranks(double &r, tagint ab[2], double send_below)
{
  struct {
    double r;
    int rank;
  } local{closest_pair(ab[0], ab[1]), comm->me}, best{};
  MPI_Allreduce(&local, &best, 1, MPI_DOUBLE_INT, MPI_MINLOC, world);
  r = best.r;
  if (comm->nprocs > 1 && r < send_below)
    MPI_Bcast(ab, 2, MPI_LMP_TAGINT, best.rank, world);
}

/* ----------------------------------------------------------------------
   the closest pair (IDs a <= b) of the rank's layout and its distance;
   infinity when the layout has no pair
------------------------------------------------------------------------- */

double PairAllscaip::closest_pair(tagint &a, tagint &b) const
{
  double best_sq = INFINITY;
  a = b = 0;
  for (int64_t c = 0; c < layout.num_centres(); c++)
    for (int k = 0; k < layout.count[c]; k++) {
      const size_t s = layout.slot(c, k);
      const double *d = &layout.vec[3 * s];
      const double r_sq = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
      if (r_sq >= best_sq) continue;
      best_sq = r_sq;
      const tagint i = atom->tag[layout.centres[c]], j = atom->tag[layout.atom[s]];
      a = std::min(i, j);
      b = std::max(i, j);
    }
  return std::sqrt(best_sq);
}

/* ----------------------------------------------------------------------
   the staged evaluation: per-centre energies [nc], dE/dvec [nc, kmax, 3]
   and (node encoding) dE/dpair [P, 3]
------------------------------------------------------------------------- */

void PairAllscaip::check_finite_staged(const torch::Tensor &energies, const torch::Tensor &dE_dvec,
                                       const torch::Tensor &dE_dpair)
{
  if (!any_rank_non_finite(all_finite({&energies, &dE_dvec, &dE_dpair}))) return;
  const int64_t nc = layout.num_centres();
  std::set<tagint> ids;
  if (nc == 0) {
    stop_non_finite(ids);
    return;
  }
  auto e = host_rows(energies, nc);
  auto g = host_rows(dE_dvec, nc * layout.kmax);
  for (int64_t c = 0; c < nc; c++) {
    if (!row_finite(e, c)) ids.insert(atom->tag[layout.centres[c]]);
    for (int k = 0; k < layout.count[c]; k++) {
      const size_t s = layout.slot(c, k);
      if (row_finite(g, static_cast<int64_t>(s))) continue;
      ids.insert(atom->tag[layout.centres[c]]);
      ids.insert(atom->tag[layout.atom[s]]);
    }
  }
  if (dE_dpair.defined() && encoding_pairs.size() > 0) {
    auto gp = host_rows(dE_dpair, encoding_pairs.size());
    for (int64_t p = 0; p < encoding_pairs.size(); p++) {
      if (row_finite(gp, p)) continue;
      ids.insert(atom->tag[layout.centres[encoding_pairs.centre[p]]]);
      ids.insert(atom->tag[encoding_pairs.atom[p]]);
    }
  }
  stop_non_finite(ids);
}

/* ----------------------------------------------------------------------
   the whole-system evaluation: energy [], forces [nc, 3], virial [3, 3],
   energies [nc]
------------------------------------------------------------------------- */

void PairAllscaip::check_finite_whole(const torch::Tensor &energy, const torch::Tensor &forces,
                                      const torch::Tensor &virial, const torch::Tensor &energies)
{
  if (!any_rank_non_finite(all_finite({&energy, &forces, &virial, &energies}))) return;
  const int64_t nc = layout.num_centres();
  std::set<tagint> ids;
  auto e = host_rows(energies, nc);
  auto f = host_rows(forces, nc);
  for (int64_t c = 0; c < nc; c++)
    if (!row_finite(e, c) || !row_finite(f, c)) ids.insert(atom->tag[layout.centres[c]]);
  stop_non_finite(ids);
}

/* ----------------------------------------------------------------------
   collective: whether any rank's results are not finite (one integer
   all-reduce per step), so that every rank takes the same branch
------------------------------------------------------------------------- */

bool PairAllscaip::any_rank_non_finite(bool finite_here)
{
  int bad = finite_here ? 0 : 1, any = 0;
  MPI_Allreduce(&bad, &any, 1, MPI_INT, MPI_MAX, world);
  return any != 0;
}

/* ----------------------------------------------------------------------
   collective: the first atom IDs of every rank and the closest pair of all
   ranks to rank 0, then error->all
------------------------------------------------------------------------- */

void PairAllscaip::stop_non_finite(const std::set<tagint> &ids)
{
  // the IDs (sorted, deduplicated over the ranks: an atom is named by its owner and by the
  // ranks that hold it as a ghost)
  std::vector<tagint> mine(kNamedAtoms, 0);
  std::copy_n(ids.begin(), std::min(ids.size(), kNamedAtoms), mine.begin());
  std::vector<tagint> all(kNamedAtoms * comm->nprocs, 0);
  MPI_Allgather(mine.data(), kNamedAtoms, MPI_LMP_TAGINT, all.data(), kNamedAtoms, MPI_LMP_TAGINT, world);
  bigint here = static_cast<bigint>(ids.size()), count = 0;
  MPI_Allreduce(&here, &count, 1, MPI_LMP_BIGINT, MPI_SUM, world);
  std::set<tagint> named;
  for (tagint id : all)
    if (id > 0) named.insert(id);

  // the closest pair over all ranks: with NaN spread by the node attention to every atom, the
  // pair that caused it is usually this one
  tagint ab[2];
  double r;
  closest_pair_of_all_ranks(r, ab, INFINITY);
  const std::string closest = std::isfinite(r)
      ? fmt::format(" (the closest pair: atoms {} and {}, {:.4g} A apart)", ab[0], ab[1], r)
      : std::string();
  const std::string more = count > static_cast<bigint>(named.size())
      ? " (" + std::to_string(count) + " counted over the ranks, ghost images included)"
      : std::string();
  const std::string who = named.empty() ? std::string("no single atom (the total energy or virial)")
                                        : "atom IDs " + id_list(named) + more;
  error->all(FLERR,
             "pair_style allscaip: the model gave non-finite (NaN or Inf) energies or forces at step "
             "{} for {}{}. These atoms are usually overlapping or far outside the model's training "
             "data: check the input structure near them (duplicated atoms, a hydrogen on its parent "
             "atom), or in MD reduce the timestep and dump the trajectory every step before this "
             "one to see how they got there",
             update->ntimestep, who, closest);
}
