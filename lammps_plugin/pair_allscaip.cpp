/* ----------------------------------------------------------------------
   pair_style allscaip: AllScAIP machine-learning potential (TorchScript .pt
   or AOTInductor .pt2 export).

   Each force call builds the neighbour layout of the rank's owned atoms
   (allscaip_neighbors.h) and evaluates the model on it:
     staged (allscaip_staged.h), the one path for 1..P ranks: per-centre
       energies and g = dE/dvec per edge; f_i += g, f_j -= g and the virial
       W = -sum vec (x) g over the rank's edges (no fdotr);
     whole system (allscaip_whole_system.h) for models whose node attention
       depends on distances (distance_bias; one rank) and AOTInductor packages
       (any number of ranks: every rank gathers all atoms and evaluates the
       whole system, keeping its own atoms' rows; no parallel speed-up):
       energies, forces and the model's virial W = -dE/dstrain.
   A model with a node encoding (sinc_pairs) runs staged on any number of
   ranks: ghosts and the neighbour list reach max(cutoff, encoding range); its
   pairs (centre i, any atom j within the range) give g = dE/dpair_vec, tallied
   like an edge's. As an AOTInductor package it runs whole-system (gathered on
   several ranks), with the same pairs as inputs of the package.
   Both virials reach LAMMPS through symmetric_voigt and tally_global_virial
   (pair_allscaip_tally.cpp, with the other tallies).
------------------------------------------------------------------------- */

#include "pair_allscaip.h"

#include "allscaip_heap.h"
#include "allscaip_staged.h"
#include "allscaip_threads.h"
#include "allscaip_voigt.h"
#include "allscaip_whole_system.h"

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

#include <torch/cuda.h>

#include <algorithm>
#include <cmath>
#include <cstring>

using namespace LAMMPS_NS;

using allscaip::symmetric_voigt;

/* ---------------------------------------------------------------------- */

PairAllscaip::PairAllscaip(LAMMPS *lmp) :
    Pair(lmp), device_name("cpu"), charge(0), spin(1),
    cutoff(0.0), cutoff_sq(0.0),
    encoding_range_sq(0.0),
    threads_configured(false), min_distance_setting(-1.0), min_distance(0.0), halo(nullptr),
    halo_cols(0), halo_nall(0), halo_nmax(0)
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
                       [attention_block B] [recompute yes|no] [min_distance R|model|off]
------------------------------------------------------------------------- */

void PairAllscaip::settings(int narg, char **arg)
{
  int64_t new_charge = 0, new_spin = 1;
  allscaip::StagedOptions new_options;
  double new_min_distance = -1.0;
  std::string new_device = "cpu";
  int iarg = 0;
  while (iarg < narg) {
    const std::string key = arg[iarg];
    if (iarg + 1 >= narg)
      error->all(FLERR, "Illegal pair_style allscaip command: keyword {} needs a value; usage: "
                 "pair_style allscaip [charge Q] [spin S] [device cpu|cuda|cuda:N] "
                 "[attention_block B] [recompute yes|no] [min_distance R|model|off]", key);
    if (key == "charge") {
      new_charge = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
    } else if (key == "spin") {
      new_spin = utils::inumeric(FLERR, arg[iarg + 1], false, lmp);
      if (new_spin < 0)
        error->all(FLERR, "pair_style allscaip: spin is the spin multiplicity 2S+1 (>= 1, or 0 "
                   "for unspecified), got {}", new_spin);
    } else if (key == "min_distance") {
      const std::string v = arg[iarg + 1];
      const bool word = v == "off" || v == "model";
      new_min_distance = v == "off" ? 0.0 : v == "model" ? -1.0 : utils::is_double(v) ? std::stod(v) : -2.0;
      if (!word && !(new_min_distance > 0.0))
        error->all(FLERR, "pair_style allscaip: min_distance must be a positive distance in "
                   "Angstrom, 'model' (the model's own) or 'off', got {}", v);
    } else if (key == "device") {
      new_device = arg[iarg + 1];
    } else if (key == "attention_block") {
      new_options.attention_block = utils::bnumeric(FLERR, arg[iarg + 1], false, lmp);
      if (new_options.attention_block < 1)
        error->all(FLERR, "pair_style allscaip: attention_block is the largest number of node-"
                   "attention logits held at once (>= 1; default {}), got {}",
                   allscaip::DEFAULT_BLOCK_LOGITS, new_options.attention_block);
    } else if (key == "recompute") {
      new_options.recompute_local = utils::logical(FLERR, arg[iarg + 1], false, lmp) == 1;
    } else {
      error->all(FLERR, "Illegal pair_style allscaip keyword '{}'; usage: pair_style allscaip "
                 "[charge Q] [spin S] [device cpu|cuda|cuda:N] [attention_block B] "
                 "[recompute yes|no] [min_distance R|model|off]", key);
    }
    iarg += 2;
  }
  try {
    allscaip::parse_device(new_device);
  } catch (const allscaip::ModelError &e) {
    error->all(FLERR, "pair_style allscaip: {}", e.what());
  }
  // `device cuda`: one GPU per rank by node-local rank (cuda:N names one for every rank)
  if (new_device == "cuda")
    new_device = allscaip::device_for_rank(new_device, allscaip::node_ranks(world).local_rank,
                                           static_cast<int>(torch::cuda::device_count()));
  // a model loaded for another device must be loaded again by a new pair_coeff
  if (model && new_device != device_name) {
    model.reset();
    if (allocated)
      for (int i = 1; i <= atom->ntypes; i++)
        for (int j = i; j <= atom->ntypes; j++) setflag[i][j] = 0;
  }
  charge = new_charge;
  spin = new_spin;
  staged_options = new_options;
  min_distance_setting = new_min_distance;
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
  staged_package.reset();
  if (info.staged_interface == "dd_vjp") {
    try {
      staged_package = std::make_unique<allscaip::StagedPackage>(model_path, info, model->device());
    } catch (const allscaip::ModelError &e) {
      error->all(FLERR, "pair_style allscaip: {}", e.what());
    }
  }

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
  encoding_range_sq = info.encoding_range * info.encoding_range;
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
  if (staged_package && info.charge_spin && (charge != info.staged_charge || spin != info.staged_spin))
    error->all(FLERR, "pair_style allscaip: the staged AOTInductor package {} was compiled for "
               "charge {} and spin {}, but pair_style asks for charge {} spin {}; set pair_style "
               "allscaip charge {} spin {}, or export the package again with allscaip-export "
               "--format aoti --staged --charge {} --spin {}", model_path, info.staged_charge,
               info.staged_spin, charge, spin, info.staged_charge, info.staged_spin, charge, spin);
  if (comm->me == 0 && staged_package)
    utils::logmesg(lmp, "allscaip: staged AOTInductor package: {} compiled stages and their VJPs, "
                   "domain decomposition over {} MPI rank(s){}\n", 2 * info.num_layers + 2,
                   comm->nprocs, comm->nprocs == 1 && model->has_whole_system()
                   ? " (on one rank its whole-system model runs, the stages only for per-atom virials)"
                   : "");
  if (comm->me == 0 && comm->nprocs > 1 && model->is_aoti() && !staged_package)
    utils::logmesg(lmp, "allscaip: AOTInductor package on {} MPI ranks: gathered whole-system "
                   "evaluation (every rank gathers all atoms and evaluates the whole system: "
                   "results independent of the rank count, no parallel speed-up); for parallel "
                   "speed-up use the TorchScript export (.pt), whose staged evaluation splits the "
                   "work\n", comm->nprocs);
  if (comm->me == 0 && model->has_encoding())
    utils::logmesg(lmp, "allscaip: node encoding {} with range {} A: the neighbour list and the "
                   "ghost atoms reach {} A\n", info.node_encoding, info.encoding_range,
                   std::max(cutoff, info.encoding_range));

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
  min_distance = min_distance_setting < 0.0 ? model->info().min_distance : min_distance_setting;

  const allscaip::ModelInfo &info = model->info();
  // an AOTInductor package runs gathered on any number of ranks (compute_whole_system)
  if (comm->nprocs > 1 && !info.supports_domain_decomposition && !model->is_aoti()) {
    if (info.staged_interface == "fairchem")
      error->all(FLERR, "pair_style allscaip: model {} is a fairchem AllScAIP with the frequency or "
                 "sinc mask (sm), whose staged evaluation does not exist, and cannot run on {} MPI "
                 "ranks; run it on 1 rank, or use an md checkpoint", model_path, comm->nprocs);
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
  // the neighbour list and the ghost atoms reach the node encoding's range too (the layout
  // keeps only the neighbours within the model cutoff)
  return model && model->has_encoding() ? std::max(cutoff, model->info().encoding_range) : cutoff;
}

/* ----------------------------------------------------------------------
   torch threads, set once by the first init_style (allscaip_threads.h)
------------------------------------------------------------------------- */

void PairAllscaip::configure_threads()
{
  if (threads_configured) return;
  threads_configured = true;
  const std::string note = allscaip::configure_torch_threads(world);
  if (comm->me == 0) utils::logmesg(lmp, "allscaip: {}\n", note);
}

/* ---------------------------------------------------------------------- */

void PairAllscaip::compute(int eflag, int vflag)
{
  ev_init(eflag, vflag);
  if (atom->natoms == 0) return;
  torch::AutoGradMode grad_mode(true);
  try {
    const allscaip::ModelInfo &info = model->info();
    // a staged .pt2 on one rank: its whole-system model is 1.5x faster than the stages (whose
    // VJPs recompute the forward; docs/benchmarks.md), unless per-atom virials are asked for
    const bool staged_on_one_rank = staged_package && comm->nprocs == 1 &&
                                    model->has_whole_system() && !vflag_atom;
    if (info.supports_domain_decomposition && info.staged_interface == "fairchem")
      compute_fairchem_staged();
    else if (info.supports_domain_decomposition && !staged_on_one_rank)
      compute_staged();
    else
      compute_whole_system();
  } catch (const c10::Error &e) {
    error->one(FLERR, "pair_style allscaip: torch error: {}", e.what_without_backtrace());
  } catch (const std::runtime_error &e) {
    error->one(FLERR, "pair_style allscaip: {}", e.what());
  }
}

/* ----------------------------------------------------------------------
   centres (owned atoms of mapped types) and their neighbours within the
   model cutoff, from the full neighbour list
------------------------------------------------------------------------- */

void PairAllscaip::build_layout()
{
  layout.build(list, atom->x, atom->type, atom->nlocal, atom->nghost, type_species, type_z,
               cutoff_sq);
}

/* ----------------------------------------------------------------------
   staged (domain-decomposed) evaluation: the one path for 1..P ranks
------------------------------------------------------------------------- */

void PairAllscaip::compute_staged()
{
  build_layout();
  prepare_halo();
  ghost_ctx.halo = this;

  const bool encoded = model->has_encoding();
  if (encoded) build_encoding_pairs();    // collective (tag gather)

  check_min_distance();
  auto result = staged_package
      ? allscaip::evaluate_staged_pt2(*staged_package, model->info(), layout, model->device(),
                                      model->dtype(), world, ghost_ctx, gather_ctx)
      : allscaip::evaluate_staged(*model, layout, charge, spin, world, ghost_ctx, gather_ctx,
                                  encoded ? &encoding_pairs : nullptr, staged_options);
  check_finite_staged(result.energies, result.dE_dvec, result.dE_dpair);
  tally_energies(result.energies, torch::Tensor());
  if (result.dE_dvec.defined() && layout.num_centres() > 0) tally_edge_gradients(result.dE_dvec);
  if (result.dE_dpair.defined() && encoding_pairs.size() > 0) tally_pair_gradients(result.dE_dpair);
}

/* ----------------------------------------------------------------------
   halo buffer [nall, hidden] (capacity in doubles: a later pair_coeff may
   change hidden)
------------------------------------------------------------------------- */

void PairAllscaip::prepare_halo()
{
  const int nall = atom->nlocal + atom->nghost;
  if (static_cast<int64_t>(nall) * halo_cols > halo_nmax) {
    halo_nmax = std::max<int64_t>(atom->nmax, nall) * halo_cols;
    memory->destroy(halo);
    memory->create(halo, halo_nmax, "pair:allscaip:halo");
  }
  halo_nall = nall;
}

/* ----------------------------------------------------------------------
   the row of every rank's centres in the all-gathered keys/values (and in
   the gathered whole system), by tag: collective
------------------------------------------------------------------------- */

void PairAllscaip::gather_centre_rows()
{
  centre_tags.resize(layout.centres.size());
  for (size_t c = 0; c < layout.centres.size(); c++) centre_tags[c] = atom->tag[layout.centres[c]];
  allscaip::gather_rows_by_tag(world, centre_tags, gathered_row_of_tag);
}

/* ----------------------------------------------------------------------
   node encoding: the gathered rows (collective), then the pairs (centre i,
   atom j within range)
------------------------------------------------------------------------- */

void PairAllscaip::build_encoding_pairs()
{
  gather_centre_rows();
  encoding_pairs.build(list, atom->x, atom->type, atom->tag, layout, type_species,
                       gathered_row_of_tag, encoding_range_sq);
}

/* ----------------------------------------------------------------------
   whole-system evaluation (models without the staged interface:
   distance_bias models and AOTInductor packages): every rank gathers the
   whole system and keeps its centres' forces and energies; the energy and
   the virial enter LAMMPS (which sums them over ranks) as this rank's
   share: its centres' energies and nc/N of the virial
------------------------------------------------------------------------- */

void PairAllscaip::compute_whole_system()
{
  if (vflag_atom)
    error->all(FLERR, "pair_style allscaip: per-atom virial (compute stress/atom) is not "
               "available for models without the staged interface (distance_bias models and "
               "AOTInductor packages), whose whole-system call gives the total virial only; use "
               "the TorchScript export (.pt) of a model without distance_bias");
  build_layout();
  check_min_distance();
  const bool encoded = model->has_encoding();
  if (encoded)
    build_encoding_pairs();    // collective, gathers the rows too
  else
    gather_centre_rows();    // collective
  const allscaip::BoxAtoms atoms{atom->x, atom->tag, atom->nlocal, domain->h, domain->periodicity};
  auto result = allscaip::evaluate_whole_system(*model, layout, atoms, charge, spin, world,
                                                gathered_row_of_tag,
                                                encoded ? &encoding_pairs : nullptr);
  check_finite_whole(result.energy, result.forces, result.virial, result.energies);

  const double conv = units->energy();
  const int64_t nc = layout.num_centres();
  auto f_host = result.forces.to(torch::kCPU, torch::kFloat64).contiguous();
  const double *fp = f_host.data_ptr<double>();
  double **f = atom->f;
  for (int64_t c = 0; c < nc; c++)
    for (int a = 0; a < 3; a++) f[layout.centres[c]][a] += conv * fp[3 * c + a];
  // one rank: the model's total energy; several: the sum of this rank's centres' energies
  tally_energies(result.energies, comm->nprocs == 1 ? result.energy : torch::Tensor());
  if (vflag_global && result.system_atoms > 0) {
    auto w_host = result.virial.to(torch::kCPU, torch::kFloat64).contiguous();
    double v[6];
    symmetric_voigt(w_host.data_ptr<double>(), v);
    tally_global_virial(v, conv * static_cast<double>(nc) / static_cast<double>(result.system_atoms));
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
  bytes += layout.memory_usage();
  bytes += encoding_pairs.memory_usage();
  return bytes;
}
