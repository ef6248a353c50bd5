/* -*- c++ -*- ----------------------------------------------------------
   The neighbour layout of one rank's evaluation, built from a LAMMPS full
   neighbour list:

     centres   owned atoms of mapped types, in neighbour-list order; row c
     slots     [nc, kmax] padded neighbours j of each centre within the model
               cutoff; vec = x_j - x_i, mask = 1 for a real neighbour
     rows      index of each slot in h_all = [centres ; ghosts]: an owned
               neighbour is its centre row, a ghost gets a row after the nc
               centre rows the first time it is seen; padding slots point at
               the centre itself with a zero vector

   Both evaluations read it: the staged one (allscaip_staged.h) feeds it to
   the model and the ghost exchange, the whole-system one
   (allscaip_whole_system.h) turns its ghosts into periodic shifts.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_NEIGHBORS_H
#define ALLSCAIP_NEIGHBORS_H

#include "lmptype.h"

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace LAMMPS_NS {
class NeighList;
}

namespace allscaip {

struct NeighborLayout {
  std::vector<int> centres;           // centre c -> LAMMPS atom index
  std::vector<int> ghosts;            // ghost row nc + g -> LAMMPS atom index
  std::vector<int> centre_of_atom;    // owned atom -> centre, -1 if not a centre
  std::vector<int> ghost_slot;        // ghost atom (j - nlocal) -> row in h_all, -1 unused
  std::vector<int> count;             // neighbours per centre
  std::vector<int> atom;              // [nc * kmax] LAMMPS atom index of each slot, -1 padding
  std::vector<int64_t> index;         // [nc * kmax] row in h_all (centres then ghosts)
  std::vector<double> vec;            // [nc * kmax * 3] x_j - x_i
  std::vector<uint8_t> mask;          // [nc * kmax]
  std::vector<int64_t> numbers;       // atomic numbers of the rows of h_all
  int kmax = 1;                       // slots per centre (>= 1)

  int64_t num_centres() const { return static_cast<int64_t>(centres.size()); }
  int64_t num_rows() const { return static_cast<int64_t>(numbers.size()); }
  size_t slot(int64_t c, int k) const { return static_cast<size_t>(c) * kmax + k; }

  // Fill every array from a full neighbour list (owned and ghost atoms as neighbours).
  // type_species: LAMMPS type -> model element (-1 for NULL types, which are left out);
  // type_z: LAMMPS type -> atomic number. Throws std::runtime_error if an owned neighbour
  // is not a centre of the list. The storage of the arrays is reused between calls.
  void build(const LAMMPS_NS::NeighList *list, double *const *x, const int *type, int nlocal,
             int nghost, const std::vector<int> &type_species, const std::vector<int64_t> &type_z,
             double cutoff_sq);

  double memory_usage() const;    // bytes of the per-slot and per-atom arrays
};

// The pairs of a node encoding on one rank: every centre i with every atom j (owned or ghost
// image, mapped type) within the encoding range, j != i; vec = x_j - x_i. The pair bias enters
// node attention between i's query (row = centre) and the key of j's owner (col = its row in the
// keys/values gathered over all ranks, found by atom tag); its gradient is tallied like an edge's.
struct EncodingPairs {
  std::vector<int> centre;         // [P] centre c of i
  std::vector<int> atom;           // [P] LAMMPS atom index of j
  std::vector<int64_t> row;        // [P] = centre, as the model's index dtype
  std::vector<int64_t> col;        // [P] gathered row of j's owner
  std::vector<double> vec;         // [P * 3] x_j - x_i

  int64_t size() const { return static_cast<int64_t>(centre.size()); }

  // From the same full neighbour list as the layout (built with a cutoff >= the encoding
  // range); gathered_row_of_tag: atom tag -> row in the gathered keys/values. Throws
  // std::runtime_error if a neighbour's tag has no gathered row.
  void build(const LAMMPS_NS::NeighList *list, double *const *x, const int *type,
             const LAMMPS_NS::tagint *tag_of_atom, const NeighborLayout &layout,
             const std::vector<int> &type_species,
             const std::unordered_map<int64_t, int64_t> &gathered_row_of_tag, double range_sq);

  double memory_usage() const;
};

}    // namespace allscaip

#endif
