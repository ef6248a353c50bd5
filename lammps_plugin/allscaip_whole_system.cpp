/* ----------------------------------------------------------------------
   Whole-system evaluation: owned atoms + periodic shifts reconstructed
   from the ghosts of the neighbour layout.
------------------------------------------------------------------------- */

#include "allscaip_whole_system.h"

#include <cmath>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace allscaip {

namespace {

// integer lattice shift S with x_j = x_owner + S @ cell (cell rows a, b, c lower triangular;
// hm is LAMMPS Domain::h); appended to shifts
void append_shift(const double *xj, const double *xo, const double *hm, std::vector<double> &shifts)
{
  const double d[3] = {xj[0] - xo[0], xj[1] - xo[1], xj[2] - xo[2]};
  const double sz = std::round(d[2] / hm[2]);
  const double sy = std::round((d[1] - sz * hm[3]) / hm[1]);
  const double sx = std::round((d[0] - sy * hm[5] - sz * hm[4]) / hm[0]);
  shifts.push_back(sx);
  shifts.push_back(sy);
  shifts.push_back(sz);
}

}    // namespace

WholeSystemResult evaluate_whole_system(Model &model, const NeighborLayout &layout,
                                        const BoxAtoms &atoms, int64_t charge, int64_t spin,
                                        const EncodingPairs *pairs)
{
  double *const *x = atoms.x;
  const double *hm = atoms.h;
  const torch::Device device = model.device();
  const torch::ScalarType dtype = model.dtype();
  const std::vector<int> &centres = layout.centres;
  const int64_t nc = layout.num_centres();

  std::unordered_map<LAMMPS_NS::tagint, int> centre_of_tag;
  for (int64_t c = 0; c < nc; c++) centre_of_tag[atoms.tag[centres[c]]] = static_cast<int>(c);

  const double cell[9] = {hm[0], 0.0, 0.0, hm[5], hm[1], 0.0, hm[4], hm[3], hm[2]};
  std::vector<int64_t> ei, ej;
  std::vector<double> shifts;
  for (int64_t c = 0; c < nc; c++) {
    for (int k = 0; k < layout.count[c]; k++) {
      const int j = layout.atom[layout.slot(c, k)];
      int owner;
      if (j < atoms.nlocal) {
        owner = layout.centre_of_atom[j];
      } else {
        auto it = centre_of_tag.find(atoms.tag[j]);
        if (it == centre_of_tag.end())
          throw std::runtime_error("ghost atom " + std::to_string(atoms.tag[j]) +
                                   " has no owned image");
        owner = it->second;
      }
      ei.push_back(c);
      ej.push_back(owner);
      append_shift(x[j], x[centres[owner]], hm, shifts);
    }
  }
  const int64_t ne = static_cast<int64_t>(ei.size());
  std::vector<double> pos(3 * nc);
  for (int64_t c = 0; c < nc; c++)
    for (int a = 0; a < 3; a++) pos[3 * c + a] = x[centres[c]][a];
  std::vector<int64_t> edge_index(ei);
  edge_index.insert(edge_index.end(), ej.begin(), ej.end());
  const bool pbc[3] = {atoms.periodicity[0] != 0, atoms.periodicity[1] != 0,
                       atoms.periodicity[2] != 0};
  std::vector<int64_t> numbers(layout.numbers.begin(), layout.numbers.begin() + nc);

  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto positions = torch::from_blob(pos.data(), {nc, 3}, f64).to(device, dtype, false, true);
  auto numbers_t = torch::from_blob(numbers.data(), {nc}, i64).to(device, torch::kInt64, false, true);
  auto cell_t = torch::from_blob(const_cast<double *>(cell), {3, 3}, f64).to(device, dtype, false, true);
  auto pbc_t = torch::from_blob(const_cast<bool *>(pbc), {3}, torch::kBool)
                   .to(device, torch::kBool, false, true);
  auto ei_t = torch::from_blob(edge_index.data(), {2, ne}, i64).to(device, torch::kInt64, false, true);
  auto sh_t = torch::from_blob(shifts.data(), {ne, 3}, f64).to(device, dtype, false, true);
  torch::Tensor pair_index_t, pair_shifts_t;
  if (model.has_encoding()) {
    if (pairs == nullptr)
      throw std::runtime_error("internal error: a node-encoding model needs its pairs");
    // on one rank the gathered column of j is its owner's centre: the pair (i, owner, S)
    const int64_t np = pairs->size();
    std::vector<int64_t> pair_index(2 * np);
    std::vector<double> pair_shifts;
    pair_shifts.reserve(3 * np);
    for (int64_t p = 0; p < np; p++) {
      pair_index[p] = pairs->row[p];
      pair_index[np + p] = pairs->col[p];
      append_shift(x[pairs->atom[p]], x[centres[pairs->col[p]]], hm, pair_shifts);
    }
    pair_index_t = torch::from_blob(pair_index.data(), {2, np}, i64).to(device, torch::kInt64, false, true);
    pair_shifts_t = torch::from_blob(pair_shifts.data(), {np, 3}, f64).to(device, dtype, false, true);
  }
  auto [energy, forces, virial, energies] = model.whole_system(
      positions, numbers_t, cell_t, pbc_t, ei_t, sh_t, charge, spin, pair_index_t, pair_shifts_t);
  return {energy, forces, virial, energies};
}

}    // namespace allscaip
