/* ----------------------------------------------------------------------
   pair_style allscaip: tallying the model's per-atom energies and pair
   gradients into LAMMPS's energy, forces, global and per-atom virial (the
   edges of the local graph and the node encoding's pairs alike).
------------------------------------------------------------------------- */

#include "pair_allscaip.h"

#include "allscaip_voigt.h"

#include "atom.h"

using namespace LAMMPS_NS;
using allscaip::symmetric_voigt;

/* ----------------------------------------------------------------------
   energies of the centres (eV -> engine units): per atom, and in total the
   model's `total` if given (whole system) or the sum over the centres
------------------------------------------------------------------------- */

void PairAllscaip::tally_energies(const torch::Tensor &energies, const torch::Tensor &total)
{
  const double conv = units->energy();
  const int64_t nc = layout.num_centres();
  auto e_host = energies.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const double *ep = e_host.data_ptr<double>();
  if (eflag_global) {
    double sum = 0.0;
    if (total.defined())
      sum = total.item<double>();
    else
      for (int64_t c = 0; c < nc; c++) sum += ep[c];
    eng_vdwl += conv * sum;
  }
  if (eflag_atom)
    for (int64_t c = 0; c < nc; c++) eatom[layout.centres[c]] += conv * ep[c];
}

/* ----------------------------------------------------------------------
   forces and virials from g = dE/dvec of each edge i -> j (vec = x_j - x_i):
   f_i += g, f_j -= g; the edge's virial W = -vec (x) g, half to i and half
   to j per atom
------------------------------------------------------------------------- */

void PairAllscaip::tally_edge_gradients(const torch::Tensor &dE_dvec)
{
  auto g_host = dE_dvec.to(torch::kCPU, torch::kFloat64).contiguous();
  const double *gp = g_host.data_ptr<double>();
  double total[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  for (int64_t c = 0; c < layout.num_centres(); c++) {
    const int i = layout.centres[c];
    for (int k = 0; k < layout.count[c]; k++) {
      const size_t s = layout.slot(c, k);
      tally_pair(i, layout.atom[s], &layout.vec[3 * s], &gp[3 * s], total);
    }
  }
  tally_global_virial(total, 1.0);
}

/* ----------------------------------------------------------------------
   the node encoding's pairs i -> j (vec = x_j - x_i): exactly as edges
------------------------------------------------------------------------- */

void PairAllscaip::tally_pair_gradients(const torch::Tensor &dE_dpair)
{
  auto g_host = dE_dpair.to(torch::kCPU, torch::kFloat64).contiguous();
  const double *gp = g_host.data_ptr<double>();
  double total[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  for (int64_t p = 0; p < encoding_pairs.size(); p++)
    tally_pair(layout.centres[encoding_pairs.centre[p]], encoding_pairs.atom[p],
               &encoding_pairs.vec[3 * p], &gp[3 * p], total);
  tally_global_virial(total, 1.0);
}

/* ----------------------------------------------------------------------
   one pair's gradient g (model units) into forces f_i += g, f_j -= g, the
   virial W = -vec (x) g (added to `total`) and half of it to i and to j
------------------------------------------------------------------------- */

void PairAllscaip::tally_pair(int i, int j, const double *d, const double *g, double total[6])
{
  const double conv = units->energy();
  double **f = atom->f;
  const double gx = conv * g[0], gy = conv * g[1], gz = conv * g[2];
  f[i][0] += gx;
  f[i][1] += gy;
  f[i][2] += gz;
  f[j][0] -= gx;
  f[j][1] -= gy;
  f[j][2] -= gz;
  if (!vflag_either) return;
  const double w[9] = {-d[0] * gx, -d[0] * gy, -d[0] * gz,
                       -d[1] * gx, -d[1] * gy, -d[1] * gz,
                       -d[2] * gx, -d[2] * gy, -d[2] * gz};
  double v[6];
  symmetric_voigt(w, v);
  for (int m = 0; m < 6; m++) total[m] += v[m];
  if (vflag_atom) {
    for (int m = 0; m < 6; m++) {
      vatom[i][m] += 0.5 * v[m];
      vatom[j][m] += 0.5 * v[m];
    }
  }
}

/* ----------------------------------------------------------------------
   the global virial (six components, energy units of the model) times
   `scale` into LAMMPS
------------------------------------------------------------------------- */

void PairAllscaip::tally_global_virial(const double v[6], double scale)
{
  if (vflag_global)
    for (int m = 0; m < 6; m++) virial[m] += scale * v[m];
}
