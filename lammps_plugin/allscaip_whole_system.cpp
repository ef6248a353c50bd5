/* ----------------------------------------------------------------------
   Whole-system evaluation on 1..P ranks: every rank's centres, edges and
   encoding pairs are all-gathered (rows of the system = centres in rank
   order), each ghost neighbour becomes its owned image plus an integer
   lattice shift, and every rank runs the model's whole-system call.
------------------------------------------------------------------------- */

#include "allscaip_whole_system.h"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace allscaip {

namespace {

template <typename T> MPI_Datatype mpi_type_of();
template <> MPI_Datatype mpi_type_of<double>() { return MPI_DOUBLE; }
template <> MPI_Datatype mpi_type_of<int64_t>() { return MPI_INT64_T; }

// every rank's rows of `width` values, in rank order (collective); first_row: the first row of
// this rank's own in the result
template <typename T>
std::vector<T> allgather_rows(const std::vector<T> &mine, int width, MPI_Comm world,
                              int64_t *first_row = nullptr)
{
  int nranks = 1, me = 0;
  MPI_Comm_size(world, &nranks);
  MPI_Comm_rank(world, &me);
  const int64_t local = static_cast<int64_t>(mine.size());
  std::vector<int64_t> sizes(nranks, 0);
  MPI_Allgather(&local, 1, MPI_INT64_T, sizes.data(), 1, MPI_INT64_T, world);
  std::vector<int> counts(nranks, 0), displs(nranks, 0);
  int64_t total = 0;
  for (int r = 0; r < nranks; r++) {
    if (total + sizes[r] > std::numeric_limits<int>::max())
      throw std::runtime_error("the gathered system exceeds 2^31 values per array; run this "
                               "AOTInductor package on fewer atoms, or use the TorchScript .pt");
    counts[r] = static_cast<int>(sizes[r]);
    displs[r] = static_cast<int>(total);
    total += sizes[r];
  }
  if (first_row) *first_row = displs[me] / width;
  std::vector<T> all(static_cast<size_t>(total));
  MPI_Allgatherv(mine.data(), counts[me], mpi_type_of<T>(), all.data(), counts.data(),
                 displs.data(), mpi_type_of<T>(), world);
  return all;
}

int64_t row_of(const std::unordered_map<int64_t, int64_t> &row_of_tag, LAMMPS_NS::tagint tag)
{
  auto it = row_of_tag.find(tag);
  if (it == row_of_tag.end())
    throw std::runtime_error("neighbour atom " + std::to_string(tag) +
                             " is owned by no rank's centres (internal error)");
  return it->second;
}

}    // namespace

void append_lattice_shift(const double *xj, const double *xo, const double *hm,
                          std::vector<double> &shifts)
{
  const double d[3] = {xj[0] - xo[0], xj[1] - xo[1], xj[2] - xo[2]};
  const double sz = std::round(d[2] / hm[2]);
  const double sy = std::round((d[1] - sz * hm[3]) / hm[1]);
  const double sx = std::round((d[0] - sy * hm[5] - sz * hm[4]) / hm[0]);
  shifts.push_back(sx);
  shifts.push_back(sy);
  shifts.push_back(sz);
}

WholeSystemResult evaluate_whole_system(Model &model, const NeighborLayout &layout,
                                        const BoxAtoms &atoms, int64_t charge, int64_t spin,
                                        MPI_Comm world,
                                        const std::unordered_map<int64_t, int64_t> &row_of_tag,
                                        const EncodingPairs *pairs)
{
  double *const *x = atoms.x;
  const double *hm = atoms.h;
  const torch::Device device = model.device();
  const torch::ScalarType dtype = model.dtype();
  const std::vector<int> &centres = layout.centres;
  const int64_t nc = layout.num_centres();

  // the system's atoms: every rank's centres in rank order (the rows of row_of_tag)
  std::vector<double> my_pos(3 * nc);
  for (int64_t c = 0; c < nc; c++)
    for (int a = 0; a < 3; a++) my_pos[3 * c + a] = x[centres[c]][a];
  std::vector<int64_t> my_numbers(layout.numbers.begin(), layout.numbers.begin() + nc);
  int64_t first = 0;
  std::vector<double> pos = allgather_rows(my_pos, 3, world, &first);
  std::vector<int64_t> numbers = allgather_rows(my_numbers, 1, world);
  const int64_t n = static_cast<int64_t>(numbers.size());

  // this rank's edges i -> j as (row of i, row of j's owned image, lattice shift)
  std::vector<int64_t> my_ei, my_ej;
  std::vector<double> my_shifts;
  for (int64_t c = 0; c < nc; c++) {
    for (int k = 0; k < layout.count[c]; k++) {
      const int j = layout.atom[layout.slot(c, k)];
      const int64_t owner = row_of(row_of_tag, atoms.tag[j]);
      my_ei.push_back(first + c);
      my_ej.push_back(owner);
      append_lattice_shift(x[j], &pos[3 * owner], hm, my_shifts);
    }
  }
  std::vector<int64_t> edge_index = allgather_rows(my_ei, 1, world);
  const std::vector<int64_t> ej = allgather_rows(my_ej, 1, world);
  const std::vector<double> shifts = allgather_rows(my_shifts, 3, world);
  const int64_t ne = static_cast<int64_t>(ej.size());
  edge_index.insert(edge_index.end(), ej.begin(), ej.end());

  auto host = [](const auto &v) { return const_cast<void *>(static_cast<const void *>(v.data())); };
  // host arrays -> model tensors (copies: the vectors die with this call)
  auto floats = [&](const std::vector<double> &v, torch::IntArrayRef shape) {
    return torch::from_blob(host(v), shape, torch::kFloat64).to(device, dtype, false, true);
  };
  auto longs = [&](const std::vector<int64_t> &v, torch::IntArrayRef shape) {
    return torch::from_blob(host(v), shape, torch::kInt64).to(device, torch::kInt64, false, true);
  };
  const std::vector<double> cell{hm[0], 0.0, 0.0, hm[5], hm[1], 0.0, hm[4], hm[3], hm[2]};
  const bool pbc[3] = {atoms.periodicity[0] != 0, atoms.periodicity[1] != 0,
                       atoms.periodicity[2] != 0};
  auto pbc_t = torch::from_blob(const_cast<bool *>(pbc), {3}, torch::kBool)
                   .to(device, torch::kBool, false, true);
  torch::Tensor pair_index_t, pair_shifts_t;
  if (model.has_encoding()) {
    if (pairs == nullptr)
      throw std::runtime_error("internal error: a node-encoding model needs its pairs");
    // a pair (centre i, atom j) is (row of i, gathered row of j's owner = col, lattice shift)
    std::vector<int64_t> my_pi, my_pj;
    std::vector<double> my_pshifts;
    for (int64_t p = 0; p < pairs->size(); p++) {
      my_pi.push_back(first + pairs->row[p]);
      my_pj.push_back(pairs->col[p]);
      append_lattice_shift(x[pairs->atom[p]], &pos[3 * pairs->col[p]], hm, my_pshifts);
    }
    std::vector<int64_t> pair_index = allgather_rows(my_pi, 1, world);
    const std::vector<int64_t> pj = allgather_rows(my_pj, 1, world);
    const std::vector<double> pair_shifts = allgather_rows(my_pshifts, 3, world);
    const int64_t np = static_cast<int64_t>(pj.size());
    pair_index.insert(pair_index.end(), pj.begin(), pj.end());
    pair_index_t = longs(pair_index, {2, np});
    pair_shifts_t = floats(pair_shifts, {np, 3});
  }
  auto [energy, forces, virial, energies] =
      model.whole_system(floats(pos, {n, 3}), longs(numbers, {n}), floats(cell, {3, 3}), pbc_t,
                         longs(edge_index, {2, ne}), floats(shifts, {ne, 3}), charge, spin,
                         pair_index_t, pair_shifts_t);
  return {energy, forces.narrow(0, first, nc), virial, energies.narrow(0, first, nc), n};
}

}    // namespace allscaip
