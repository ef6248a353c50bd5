/* ----------------------------------------------------------------------
   Neighbour layout of one rank's evaluation from a LAMMPS full neighbour list.
------------------------------------------------------------------------- */

#include "allscaip_neighbors.h"

#include "lmptype.h"
#include "neigh_list.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace allscaip {

void NeighborLayout::build(const LAMMPS_NS::NeighList *list, double *const *x, const int *type,
                           int nlocal, int nghost, const std::vector<int> &type_species,
                           const std::vector<int64_t> &type_z, double cutoff_sq)
{
  const int inum = list->inum;
  const int *ilist = list->ilist;
  const int *numneigh = list->numneigh;
  int *const *firstneigh = list->firstneigh;

  centres.clear();
  ghosts.clear();
  centre_of_atom.assign(nlocal, -1);
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (i >= nlocal || type_species[type[i]] < 0) continue;
    centre_of_atom[i] = static_cast<int>(centres.size());
    centres.push_back(i);
  }
  const int nc = static_cast<int>(centres.size());

  // pass 1: neighbour counts -> kmax
  count.assign(nc, 0);
  kmax = 1;
  for (int c = 0; c < nc; c++) {
    const int i = centres[c];
    const int *jlist = firstneigh[i];
    int n = 0;
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (type_species[type[j]] < 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz < cutoff_sq) n++;
    }
    count[c] = n;
    kmax = std::max(kmax, n);
  }

  // pass 2: padded layout; padding points at the centre itself with a zero vector
  const size_t slots = static_cast<size_t>(nc) * kmax;
  atom.assign(slots, -1);
  index.resize(slots);
  vec.assign(3 * slots, 0.0);
  mask.assign(slots, 0);
  ghost_slot.assign(nghost, -1);
  for (int c = 0; c < nc; c++) {
    const int i = centres[c];
    const int *jlist = firstneigh[i];
    size_t s = slot(c, 0);
    for (int k = 0; k < kmax; k++) index[s + k] = c;
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (type_species[type[j]] < 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= cutoff_sq) continue;
      int64_t row;
      if (j < nlocal) {
        row = centre_of_atom[j];
        if (row < 0)
          throw std::runtime_error("owned neighbour atom " + std::to_string(j) +
                                   " is not in the neighbour list's centres (unsupported "
                                   "neighbour list filtering)");
      } else {
        int &g = ghost_slot[j - nlocal];
        if (g < 0) {
          g = nc + static_cast<int>(ghosts.size());
          ghosts.push_back(j);
        }
        row = g;
      }
      atom[s] = j;
      index[s] = row;
      vec[3 * s + 0] = dx;
      vec[3 * s + 1] = dy;
      vec[3 * s + 2] = dz;
      mask[s] = 1;
      s++;
    }
  }

  numbers.resize(nc + ghosts.size());
  for (int c = 0; c < nc; c++) numbers[c] = type_z[type[centres[c]]];
  for (size_t g = 0; g < ghosts.size(); g++) numbers[nc + g] = type_z[type[ghosts[g]]];
}

void EncodingPairs::build(const LAMMPS_NS::NeighList *list, double *const *x, const int *type,
                          const LAMMPS_NS::tagint *tag_of_atom, const NeighborLayout &layout,
                          const std::vector<int> &type_species,
                          const std::unordered_map<int64_t, int64_t> &gathered_row_of_tag,
                          double range_sq)
{
  const int *numneigh = list->numneigh;
  int *const *firstneigh = list->firstneigh;
  centre.clear();
  atom.clear();
  row.clear();
  col.clear();
  vec.clear();
  for (int64_t c = 0; c < layout.num_centres(); c++) {
    const int i = layout.centres[c];
    const int *jlist = firstneigh[i];
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (j == i || type_species[type[j]] < 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= range_sq) continue;
      auto it = gathered_row_of_tag.find(tag_of_atom[j]);
      if (it == gathered_row_of_tag.end())
        throw std::runtime_error("atom " + std::to_string(tag_of_atom[j]) +
                                 " within the node encoding's range is not owned by any rank's "
                                 "centres (unsupported neighbour list filtering)");
      centre.push_back(static_cast<int>(c));
      atom.push_back(j);
      row.push_back(c);
      col.push_back(it->second);
      vec.push_back(dx);
      vec.push_back(dy);
      vec.push_back(dz);
    }
  }
}

double EncodingPairs::memory_usage() const
{
  return (double) vec.capacity() * sizeof(double) +
      (double) (row.capacity() + col.capacity()) * sizeof(int64_t) +
      (double) (centre.capacity() + atom.capacity()) * sizeof(int);
}

double NeighborLayout::memory_usage() const
{
  double bytes = (double) vec.capacity() * sizeof(double);
  bytes += (double) index.capacity() * sizeof(int64_t);
  bytes += (double) (atom.capacity() + centre_of_atom.capacity() + ghost_slot.capacity()) *
      sizeof(int);
  return bytes;
}

}    // namespace allscaip
