/* ----------------------------------------------------------------------
   pair_style allscaip: AllScAIP machine-learning potential (TorchScript).

   One evaluation on each rank (owned atoms = "centres"):
     vec[c,k]  = x[j] - x[i] for the neighbours j (owned or ghost) of each
                 owned atom i within the model cutoff (leaf tensor)
     dd_prepare(vec, mask, index, numbers_all, charge, spin) -> h, edges
     per layer:  h_all = [h ; GhostExchange(h)]        forward comm
                 h, edges = dd_local(...)
                 q, k, v = dd_global_project(h)
                 K, V = AllGather(k, v)                 MPI_Allgatherv
                 h = dd_global_finish(h, q, K, V)
     e = dd_readout(h) + dd_core(vec, ...);  E_rank = sum(e)
   dE_rank/dvec by autograd (its backward runs the reverse communications),
   f_i += g, f_j -= g; virial W = -sum vec (x) g.
   The same path runs for one rank; models whose node attention depends on
   distances (distance_bias) use the whole-system call and one rank only.
------------------------------------------------------------------------- */

#include "pair_allscaip.h"

#include "allscaip_heap.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <unordered_map>

using namespace LAMMPS_NS;

/* ---------------------------------------------------------------------- */

PairAllscaip::PairAllscaip(LAMMPS *lmp) :
    Pair(lmp), device_name("cpu"), charge(0), spin(1), cutoff(0.0), cutoff_sq(0.0),
    threads_configured(false), halo(nullptr), halo_cols(0), halo_nall(0), halo_nmax(0)
{
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;    // the virial comes from the edge vectors (periodic images)
  centroidstressflag = CENTROID_NOTAVAIL;
  comm_forward = 0;
  comm_reverse = 0;
}

PairAllscaip::~PairAllscaip() noexcept
{
  if (copymode) return;
  memory->destroy(halo);
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
  }
}

void PairAllscaip::allocate()
{
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  for (int i = 1; i < n; i++)
    for (int j = i; j < n; j++) setflag[i][j] = 0;
}

/* ----------------------------------------------------------------------
   pair_style allscaip [charge Q] [spin S] [device cpu|cuda|cuda:N]
------------------------------------------------------------------------- */

void PairAllscaip::settings(int narg, char **arg)
{
  int64_t new_charge = 0, new_spin = 1;
  std::string new_device = "cpu";
  int iarg = 0;
  while (iarg < narg) {
    const std::string key = arg[iarg];
    if (iarg + 1 >= narg)
      error->all(FLERR, "Illegal pair_style allscaip command: keyword {} needs a value; usage: "
                 "pair_style allscaip [charge Q] [spin S] [device cpu|cuda|cuda:N]", key);
    if (key == "charge") {
      new_charge = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
    } else if (key == "spin") {
      new_spin = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (new_spin < 0)
        error->all(FLERR, "pair_style allscaip: spin is the spin multiplicity 2S+1 (>= 1, or 0 "
                   "for unspecified), got {}", new_spin);
    } else if (key == "device") {
      new_device = arg[iarg + 1];
    } else {
      error->all(FLERR, "Illegal pair_style allscaip keyword '{}'; usage: pair_style allscaip "
                 "[charge Q] [spin S] [device cpu|cuda|cuda:N]", key);
    }
    iarg += 2;
  }
  try {
    allscaip::parse_device(new_device);
  } catch (const allscaip::ModelError &e) {
    error->all(FLERR, "pair_style allscaip: {}", e.what());
  }
  // a model loaded for another device must be loaded again by a new pair_coeff
  if (model && new_device != device_name) {
    model.reset();
    if (allocated)
      for (int i = 1; i <= atom->ntypes; i++)
        for (int j = i; j <= atom->ntypes; j++) setflag[i][j] = 0;
  }
  charge = new_charge;
  spin = new_spin;
  device_name = new_device;
}

/* ----------------------------------------------------------------------
   pair_coeff * * model.pt El1 ... ElN   (N = number of atom types, NULL allowed)
------------------------------------------------------------------------- */

void PairAllscaip::coeff(int narg, char **arg)
{
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg < 3)
    error->all(FLERR, "Incorrect pair_coeff for allscaip: use pair_coeff * * model.pt El1 ... "
               "El{} (one element symbol or NULL per atom type)", ntypes);
  if (strcmp(arg[0], "*") != 0 || strcmp(arg[1], "*") != 0)
    error->all(FLERR, "Incorrect pair_coeff for allscaip: the first two arguments must be * * "
               "(one pair_coeff line maps all atom types)");
  if (narg != 3 + ntypes)
    error->all(FLERR, "Incorrect pair_coeff for allscaip: {} atom types need {} element symbols "
               "(or NULL) after the model file, got {}; use pair_coeff * * {} El1 ... El{}",
               ntypes, ntypes, narg - 3, arg[2], ntypes);

  model_path = arg[2];
  try {
    model = std::make_unique<allscaip::Model>(model_path, allscaip::parse_device(device_name));
  } catch (const allscaip::ModelError &e) {
    error->all(FLERR, "pair_style allscaip: {}", e.what());
  } catch (const std::exception &e) {
    error->all(FLERR, "pair_style allscaip: cannot load {}: {}", model_path, e.what());
  }
  const allscaip::ModelInfo &info = model->info();

  type_species.assign(ntypes + 1, -1);
  type_z.assign(ntypes + 1, 0);
  for (int t = 1; t <= ntypes; t++) {
    const std::string sym = arg[2 + t];
    if (sym == "NULL") continue;
    const int s = model->element_index(sym);
    if (s < 0)
      error->all(FLERR, "pair_coeff: element {} (atom type {}) is not in model {}, whose elements "
                 "are: {}; fix the element list of pair_coeff or use a model trained on {}",
                 sym, t, model_path, model->element_list(), sym);
    type_species[t] = s;
    type_z[t] = info.atomic_numbers[s];
  }
  int count = 0;
  for (int i = 1; i <= ntypes; i++)
    for (int j = i; j <= ntypes; j++) {
      setflag[i][j] = (type_species[i] >= 0 && type_species[j] >= 0) ? 1 : 0;
      count += setflag[i][j];
    }
  if (count == 0) error->all(FLERR, "pair_coeff for allscaip maps no atom type to an element");

  cutoff = info.cutoff;
  cutoff_sq = cutoff * cutoff;
  halo_cols = info.hidden;
  comm_forward = info.hidden;
  comm_reverse = info.hidden;

  if (info.charge_spin) {
    if (info.max_charge > 0 && std::abs(charge) > info.max_charge)
      error->all(FLERR, "pair_style allscaip: charge {} is outside the model's range -{}..{}",
                 charge, info.max_charge, info.max_charge);
    if (info.max_spin > 0 && spin > info.max_spin)
      error->all(FLERR, "pair_style allscaip: spin multiplicity {} is outside the model's range "
                 "0..{}", spin, info.max_spin);
  }

  if (comm->me == 0)
    utils::logmesg(lmp,
                   "allscaip: model {} (allscaip {}, interface {}, {} on {}): elements {}, "
                   "cutoff {} A, {} layers, hidden {}, node attention {}, domain decomposition "
                   "{}\n",
                   model_path, info.allscaip_version, info.interface_version, info.dtype,
                   device_name, model->element_list(), cutoff, info.num_layers, info.hidden,
                   info.node_attention ? "yes" : "no",
                   info.supports_domain_decomposition ? "supported" : "not supported");

  // every rank: freed tensor memory stays in the heap between steps (allscaip_heap.h)
  std::string heap_note;
  allscaip::keep_heap_resident(heap_note);
  if (comm->me == 0 && !heap_note.empty())
    utils::logmesg(lmp, "allscaip: heap: {}\n", heap_note);
}

/* ---------------------------------------------------------------------- */

void PairAllscaip::init_style()
{
  if (!model) error->all(FLERR, "pair_style allscaip: pair_coeff * * model.pt ... must be given");
  if (force->newton_pair == 0)
    error->all(FLERR, "pair_style allscaip requires newton pair on; add 'newton on' to the input "
               "(before the simulation box is defined)");
  const std::string style = update->unit_style;
  if (!allscaip::UnitConversion::is_supported(style))
    error->all(FLERR, "pair_style allscaip does not support units {}; use one of: {} (the model's "
               "eV and Angstrom are converted automatically)", style,
               allscaip::UnitConversion::supported_styles());
  units = std::make_unique<allscaip::UnitConversion>(style);

  const allscaip::ModelInfo &info = model->info();
  if (comm->nprocs > 1 && !info.supports_domain_decomposition) {
    if (model->is_aoti())
      error->all(FLERR, "pair_style allscaip: model {} is an AOTInductor package, which holds the "
                 "whole-system call only and cannot run on {} MPI ranks; run it on 1 rank, or "
                 "export the model with allscaip-export --format torchscript for domain "
                 "decomposition", model_path, comm->nprocs);
    error->all(FLERR, "pair_style allscaip: model {} does not support domain decomposition{} and "
               "cannot run on {} MPI ranks; run it on 1 rank (one GPU/CPU process) or export a "
               "model without distance_bias", model_path,
               info.distance_bias ? " (its node attention uses distance_bias)" : "",
               comm->nprocs);
  }

  // As a sub-style of pair hybrid(/overlay), the hybrid style took the maximum communication
  // sizes of its sub-styles in its settings(), before pair_coeff told us the model's hidden size;
  // Comm::init() (after this) sizes the buffers from the top-level style, so raise it there.
  if (force->pair && force->pair != this) {
    force->pair->comm_forward = std::max(force->pair->comm_forward, comm_forward);
    force->pair->comm_reverse = std::max(force->pair->comm_reverse, comm_reverse);
  }

  neighbor->add_request(this, NeighConst::REQ_FULL);
  configure_threads();
}

/* ---------------------------------------------------------------------- */

double PairAllscaip::init_one(int i, int j)
{
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  return cutoff;
}

/* ----------------------------------------------------------------------
   torch intra-op threads: OMP_NUM_THREADS if set, otherwise the cores of
   this node divided by the ranks on this node
------------------------------------------------------------------------- */

void PairAllscaip::configure_threads()
{
  if (threads_configured) return;
  threads_configured = true;
  // The profiling graph executor re-specialises for every new neighbour count and atom count
  // and was slower for these shape-changing calls; plain interpretation unless asked for.
  const char *opt = std::getenv("ALLSCAIP_JIT_OPTIMIZE");
  const bool optimize = opt && *opt && std::string(opt) != "0";
  torch::jit::setGraphExecutorOptimize(optimize);
  const char *env = std::getenv("OMP_NUM_THREADS");
  if (env && *env) {
    if (comm->me == 0)
      utils::logmesg(lmp, "allscaip: torch uses {} thread(s) per rank (OMP_NUM_THREADS)\n",
                     at::get_num_threads());
    return;
  }
  MPI_Comm node;
  MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
  int ranks_on_node = 1;
  MPI_Comm_size(node, &ranks_on_node);
  MPI_Comm_free(&node);
  const int cores = std::max(1u, std::thread::hardware_concurrency());
  const int nthreads = std::max(1, cores / std::max(1, ranks_on_node));
  at::set_num_threads(nthreads);
  if (comm->me == 0)
    utils::logmesg(lmp, "allscaip: torch uses {} thread(s) per rank ({} cores, {} rank(s) on this "
                   "node; set OMP_NUM_THREADS to override)\n", nthreads, cores, ranks_on_node);
}

/* ---------------------------------------------------------------------- */

void PairAllscaip::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (atom->natoms == 0) return;
  torch::AutoGradMode grad_mode(true);
  try {
    if (model->info().supports_domain_decomposition)
      compute_staged(eflag, vflag);
    else
      compute_whole_system(eflag, vflag);
  } catch (const c10::Error &e) {
    error->one(FLERR, "pair_style allscaip: torch error: {}", e.what_without_backtrace());
  } catch (const std::runtime_error &e) {
    error->one(FLERR, "pair_style allscaip: {}", e.what());
  }
}

/* ----------------------------------------------------------------------
   centres (owned atoms of mapped types) and their neighbours within the
   model cutoff; fills the padded [nc, K] arrays, returns K (>= 1)
------------------------------------------------------------------------- */

int PairAllscaip::build_neighbors()
{
  double **x = atom->x;
  int *type = atom->type;
  const int nlocal = atom->nlocal;
  const int nghost = atom->nghost;
  const int inum = list->inum;
  int *ilist = list->ilist;
  int *numneigh = list->numneigh;
  int **firstneigh = list->firstneigh;

  std::vector<int> &owned = ghost_ctx.owned_atoms;
  std::vector<int> &ghosts = ghost_ctx.ghost_atoms;
  owned.clear();
  ghosts.clear();
  centre_of_atom.assign(nlocal, -1);
  for (int ii = 0; ii < inum; ii++) {
    const int i = ilist[ii];
    if (i >= nlocal || type_species[type[i]] < 0) continue;
    centre_of_atom[i] = static_cast<int>(owned.size());
    owned.push_back(i);
  }
  const int nc = static_cast<int>(owned.size());

  // pass 1: neighbour counts -> K
  nbr_count.assign(nc, 0);
  int kmax = 1;
  for (int c = 0; c < nc; c++) {
    const int i = owned[c];
    const int *jlist = firstneigh[i];
    int n = 0;
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (type_species[type[j]] < 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz < cutoff_sq) n++;
    }
    nbr_count[c] = n;
    kmax = std::max(kmax, n);
  }

  // pass 2: padded layout; padding points at the centre itself with a zero vector
  const size_t slots = static_cast<size_t>(nc) * kmax;
  nbr_atom.assign(slots, -1);
  nbr_index.resize(slots);
  nbr_vec.assign(3 * slots, 0.0);
  nbr_mask.assign(slots, 0);
  ghost_slot.assign(nghost, -1);
  for (int c = 0; c < nc; c++) {
    const int i = owned[c];
    const int *jlist = firstneigh[i];
    size_t s = static_cast<size_t>(c) * kmax;
    for (int k = 0; k < kmax; k++) nbr_index[s + k] = c;
    for (int jj = 0; jj < numneigh[i]; jj++) {
      const int j = jlist[jj] & NEIGHMASK;
      if (type_species[type[j]] < 0) continue;
      const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
      if (dx * dx + dy * dy + dz * dz >= cutoff_sq) continue;
      int64_t row;
      if (j < nlocal) {
        row = centre_of_atom[j];
        if (row < 0)
          error->one(FLERR, "pair_style allscaip: owned neighbour atom {} is not in the "
                     "neighbour list's centres (unsupported neighbour list filtering)", j);
      } else {
        int &g = ghost_slot[j - nlocal];
        if (g < 0) {
          g = nc + static_cast<int>(ghosts.size());
          ghosts.push_back(j);
        }
        row = g;
      }
      nbr_atom[s] = j;
      nbr_index[s] = row;
      nbr_vec[3 * s + 0] = dx;
      nbr_vec[3 * s + 1] = dy;
      nbr_vec[3 * s + 2] = dz;
      nbr_mask[s] = 1;
      s++;
    }
  }

  numbers_all.resize(nc + ghosts.size());
  for (int c = 0; c < nc; c++) numbers_all[c] = type_z[type[owned[c]]];
  for (size_t g = 0; g < ghosts.size(); g++) numbers_all[nc + g] = type_z[type[ghosts[g]]];
  return kmax;
}

/* ----------------------------------------------------------------------
   staged (domain-decomposed) evaluation: the one path for 1..P ranks
------------------------------------------------------------------------- */

void PairAllscaip::compute_staged(int eflag, int vflag)
{
  (void) eflag;
  (void) vflag;
  double **f = atom->f;
  const int nall = atom->nlocal + atom->nghost;
  const allscaip::ModelInfo &info = model->info();
  const torch::Device device = model->device();
  const torch::ScalarType dtype = model->dtype();

  const int kmax = build_neighbors();
  const std::vector<int> &owned = ghost_ctx.owned_atoms;
  const int64_t nc = static_cast<int64_t>(owned.size());
  const int64_t na = static_cast<int64_t>(numbers_all.size());

  // halo buffer [nall, hidden] (capacity in doubles: a later pair_coeff may change hidden)
  if (static_cast<int64_t>(nall) * halo_cols > halo_nmax) {
    halo_nmax = std::max<int64_t>(atom->nmax, nall) * halo_cols;
    memory->destroy(halo);
    memory->create(halo, halo_nmax, "pair:allscaip:halo");
  }
  halo_nall = nall;
  ghost_ctx.halo = this;
  if (info.node_attention) gather_ctx.setup(world, static_cast<int>(nc));    // collective

  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor vec = torch::from_blob(nbr_vec.data(), {nc, kmax, 3}, f64)
                          .to(device, dtype, false, true)
                          .requires_grad_(true);
  torch::Tensor mask = torch::from_blob(nbr_mask.data(), {nc, kmax}, torch::kUInt8)
                           .to(device, torch::kBool, false, true);
  torch::Tensor index = torch::from_blob(nbr_index.data(), {nc, kmax}, i64)
                            .to(device, torch::kInt64, false, true);
  torch::Tensor numbers = torch::from_blob(numbers_all.data(), {na}, i64)
                              .to(device, torch::kInt64, false, true);

  const int64_t halo_fwd0 = ghost_ctx.forward_calls, halo_rev0 = ghost_ctx.reverse_calls;
  const int64_t gather_fwd0 = gather_ctx.forward_calls, gather_bwd0 = gather_ctx.backward_calls;

  auto geometry = model->prepare(vec, mask, index, numbers, charge, spin);
  torch::Tensor h = geometry.h;
  torch::Tensor edges = geometry.edges;
  for (int64_t layer = 0; layer < info.num_layers; layer++) {
    torch::Tensor ghost_h = allscaip::GhostExchange::apply(h, &ghost_ctx);
    std::tie(h, edges) = model->local(layer, torch::cat({h, ghost_h}, 0), edges, geometry);
    auto [q, k, v] = model->global_project(layer, h);
    if (info.node_attention) {
      auto kv = allscaip::AllGather::apply(k, v, &gather_ctx);
      h = model->global_finish(layer, h, q, kv[0], kv[1]);
    } else {
      h = model->global_finish(layer, h, q, k, v);    // node FFN only; keys/values unused
    }
  }
  torch::Tensor energies = model->readout(h, numbers.slice(0, 0, nc));
  if (model->has_core()) energies = energies + model->core(vec, mask, index, numbers);
  torch::Tensor e_rank = energies.sum();
  auto grads = torch::autograd::grad({e_rank}, {vec}, {}, false, false, true);

  // every rank must have run each communication once per layer, forward and backward (the
  // backward order is fixed by the data dependencies layer L-1 -> 0; see docs/lammps.md)
  const int64_t nl = info.num_layers, ng = info.node_attention ? nl : 0;
  if (ghost_ctx.forward_calls - halo_fwd0 != nl || ghost_ctx.reverse_calls - halo_rev0 != nl ||
      gather_ctx.forward_calls - gather_fwd0 != ng || gather_ctx.backward_calls - gather_bwd0 != ng)
    error->one(FLERR, "pair_style allscaip: internal error: the autograd pass skipped a "
               "communication step ({} ghost exchanges and {} all-gathers backward for {} layers)",
               ghost_ctx.reverse_calls - halo_rev0, gather_ctx.backward_calls - gather_bwd0, nl);

  // ---- energies
  const double conv = units->energy();
  auto e_host = energies.detach().to(torch::kCPU, torch::kFloat64).contiguous();
  const double *ep = e_host.data_ptr<double>();
  if (eflag_global) {
    double sum = 0.0;
    for (int64_t c = 0; c < nc; c++) sum += ep[c];
    eng_vdwl += conv * sum;
  }
  if (eflag_atom)
    for (int64_t c = 0; c < nc; c++) eatom[owned[c]] += conv * ep[c];

  // ---- forces and virial from dE/dvec
  if (!grads[0].defined() || nc == 0) return;
  auto g_host = grads[0].to(torch::kCPU, torch::kFloat64).contiguous();
  const double *gp = g_host.data_ptr<double>();
  double w[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
  for (int64_t c = 0; c < nc; c++) {
    const int i = owned[c];
    for (int k = 0; k < nbr_count[c]; k++) {
      const size_t s = static_cast<size_t>(c) * kmax + k;
      const int j = nbr_atom[s];
      const double gx = conv * gp[3 * s], gy = conv * gp[3 * s + 1], gz = conv * gp[3 * s + 2];
      f[i][0] += gx;
      f[i][1] += gy;
      f[i][2] += gz;
      f[j][0] -= gx;
      f[j][1] -= gy;
      f[j][2] -= gz;
      if (vflag_either) {
        const double *d = &nbr_vec[3 * s];
        // W = -vec (x) g per edge, symmetrised
        const double v[6] = {-d[0] * gx,
                             -d[1] * gy,
                             -d[2] * gz,
                             -0.5 * (d[0] * gy + d[1] * gx),
                             -0.5 * (d[0] * gz + d[2] * gx),
                             -0.5 * (d[1] * gz + d[2] * gy)};
        for (int m = 0; m < 6; m++) w[m] += v[m];
        if (vflag_atom) {
          for (int m = 0; m < 6; m++) {
            vatom[i][m] += 0.5 * v[m];
            vatom[j][m] += 0.5 * v[m];
          }
        }
      }
    }
  }
  if (vflag_global)
    for (int m = 0; m < 6; m++) virial[m] += w[m];
}

/* ----------------------------------------------------------------------
   whole-system evaluation on one rank (models without domain decomposition
   support: distance_bias models and AOTInductor packages): owned atoms +
   periodic images as shifts
------------------------------------------------------------------------- */

void PairAllscaip::compute_whole_system(int eflag, int vflag)
{
  (void) eflag;
  (void) vflag;
  if (comm->nprocs > 1)
    error->all(FLERR, "pair_style allscaip: this model supports one MPI rank only");
  if (vflag_atom)
    error->all(FLERR, "pair_style allscaip: per-atom virial (compute stress/atom) is not "
               "available for models without domain decomposition support (distance_bias models "
               "and AOTInductor packages); use the TorchScript export of a model without "
               "distance_bias");
  double **x = atom->x;
  double **f = atom->f;
  tagint *tag = atom->tag;
  const int nlocal = atom->nlocal;
  const torch::Device device = model->device();
  const torch::ScalarType dtype = model->dtype();

  const int kmax = build_neighbors();
  const std::vector<int> &owned = ghost_ctx.owned_atoms;
  const int64_t nc = static_cast<int64_t>(owned.size());

  std::unordered_map<tagint, int> centre_of_tag;
  for (int64_t c = 0; c < nc; c++) centre_of_tag[tag[owned[c]]] = static_cast<int>(c);

  const double *hm = domain->h;    // xprd, yprd, zprd, yz, xz, xy
  const double cell[9] = {hm[0], 0.0, 0.0, hm[5], hm[1], 0.0, hm[4], hm[3], hm[2]};
  std::vector<int64_t> ei, ej;
  std::vector<double> shifts;
  for (int64_t c = 0; c < nc; c++) {
    for (int k = 0; k < nbr_count[c]; k++) {
      const size_t s = static_cast<size_t>(c) * kmax + k;
      const int j = nbr_atom[s];
      int owner;
      if (j < nlocal) {
        owner = centre_of_atom[j];
      } else {
        auto it = centre_of_tag.find(tag[j]);
        if (it == centre_of_tag.end())
          error->one(FLERR, "pair_style allscaip: ghost atom {} has no owned image", tag[j]);
        owner = it->second;
      }
      // x_j = x_owner + S @ cell (cell rows a, b, c lower triangular)
      const int o = owned[owner];
      const double d[3] = {x[j][0] - x[o][0], x[j][1] - x[o][1], x[j][2] - x[o][2]};
      const double sz = std::round(d[2] / hm[2]);
      const double sy = std::round((d[1] - sz * hm[3]) / hm[1]);
      const double sx = std::round((d[0] - sy * hm[5] - sz * hm[4]) / hm[0]);
      ei.push_back(c);
      ej.push_back(owner);
      shifts.push_back(sx);
      shifts.push_back(sy);
      shifts.push_back(sz);
    }
  }
  const int64_t ne = static_cast<int64_t>(ei.size());
  std::vector<double> pos(3 * nc);
  for (int64_t c = 0; c < nc; c++)
    for (int a = 0; a < 3; a++) pos[3 * c + a] = x[owned[c]][a];
  std::vector<int64_t> edge_index(ei);
  edge_index.insert(edge_index.end(), ej.begin(), ej.end());
  const bool pbc[3] = {domain->periodicity[0] != 0, domain->periodicity[1] != 0,
                       domain->periodicity[2] != 0};

  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto positions = torch::from_blob(pos.data(), {nc, 3}, f64).to(device, dtype, false, true);
  auto numbers = torch::from_blob(numbers_all.data(), {nc}, i64).to(device, torch::kInt64, false, true);
  auto cell_t = torch::from_blob(const_cast<double *>(cell), {3, 3}, f64).to(device, dtype, false, true);
  auto pbc_t = torch::from_blob(const_cast<bool *>(pbc), {3}, torch::kBool)
                   .to(device, torch::kBool, false, true);
  auto ei_t = torch::from_blob(edge_index.data(), {2, ne}, i64).to(device, torch::kInt64, false, true);
  auto sh_t = torch::from_blob(shifts.data(), {ne, 3}, f64).to(device, dtype, false, true);
  auto [energy, forces, wmat, energies] =
      model->whole_system(positions, numbers, cell_t, pbc_t, ei_t, sh_t, charge, spin);

  const double conv = units->energy();
  auto e_host = energies.to(torch::kCPU, torch::kFloat64).contiguous();
  auto f_host = forces.to(torch::kCPU, torch::kFloat64).contiguous();
  auto w_host = wmat.to(torch::kCPU, torch::kFloat64).contiguous();
  const double *ep = e_host.data_ptr<double>();
  const double *fp = f_host.data_ptr<double>();
  const double *wp = w_host.data_ptr<double>();
  for (int64_t c = 0; c < nc; c++) {
    const int i = owned[c];
    for (int a = 0; a < 3; a++) f[i][a] += conv * fp[3 * c + a];
    if (eflag_atom) eatom[i] += conv * ep[c];
  }
  if (eflag_global) eng_vdwl += conv * energy.item<double>();
  if (vflag_global) {
    virial[0] += conv * wp[0];
    virial[1] += conv * wp[4];
    virial[2] += conv * wp[8];
    virial[3] += conv * 0.5 * (wp[1] + wp[3]);
    virial[4] += conv * 0.5 * (wp[2] + wp[6]);
    virial[5] += conv * 0.5 * (wp[5] + wp[7]);
  }
}

/* ----------------------------------------------------------------------
   halo communications: hidden doubles per atom
------------------------------------------------------------------------- */

void PairAllscaip::halo_forward()
{
  comm->forward_comm(this);
}

void PairAllscaip::halo_reverse()
{
  comm->reverse_comm(this);
}

int PairAllscaip::pack_forward_comm(int n, int *list, double *buf, int /*pbc_flag*/,
                                    int * /*pbc*/)
{
  const int w = halo_cols;
  for (int i = 0; i < n; i++) std::memcpy(buf + i * w, halo + (size_t) list[i] * w, w * sizeof(double));
  return n * w;
}

void PairAllscaip::unpack_forward_comm(int n, int first, double *buf)
{
  const int w = halo_cols;
  std::memcpy(halo + (size_t) first * w, buf, (size_t) n * w * sizeof(double));
}

int PairAllscaip::pack_reverse_comm(int n, int first, double *buf)
{
  const int w = halo_cols;
  std::memcpy(buf, halo + (size_t) first * w, (size_t) n * w * sizeof(double));
  return n * w;
}

void PairAllscaip::unpack_reverse_comm(int n, int *list, double *buf)
{
  const int w = halo_cols;
  for (int i = 0; i < n; i++) {
    double *row = halo + (size_t) list[i] * w;
    const double *src = buf + (size_t) i * w;
    for (int m = 0; m < w; m++) row[m] += src[m];
  }
}

/* ---------------------------------------------------------------------- */

double PairAllscaip::memory_usage()
{
  double bytes = Pair::memory_usage();
  bytes += (double) halo_nmax * sizeof(double);
  bytes += (double) nbr_vec.capacity() * sizeof(double);
  bytes += (double) nbr_index.capacity() * sizeof(int64_t);
  bytes += (double) (nbr_atom.capacity() + centre_of_atom.capacity() + ghost_slot.capacity()) *
      sizeof(int);
  return bytes;
}
