/* ----------------------------------------------------------------------
   Registration of pair_style allscaip with LAMMPS (plugin load, or
   automatically from a directory in LAMMPS_PLUGIN_PATH).
------------------------------------------------------------------------- */

#include "lammpsplugin_abi.h"

#include "lammps.h"
#include "pair_allscaip.h"

#include <cstring>

#ifndef ALLSCAIP_LAMMPS_VERSION
#define ALLSCAIP_LAMMPS_VERSION "unknown"
#endif

using namespace LAMMPS_NS;

static void *allscaip_pair_creator(void *lmp)
{
  return new PairAllscaip(static_cast<LAMMPS *>(lmp));
}

extern "C" void lammpsplugin_init(void *lmp, void *handle, void *regfunc)
{
  auto register_style = reinterpret_cast<lammpsplugin_regfunc>(regfunc);
  lammpsplugin_t plugin;
  std::memset(&plugin, 0, sizeof(plugin));
  plugin.version = ALLSCAIP_LAMMPS_VERSION;
  plugin.style = "pair";
  plugin.name = "allscaip";
  plugin.info = "AllScAIP machine-learning potential (TorchScript, MPI domain decomposition)";
  plugin.author = "allscaip developers";
  plugin.creator.v1 = &allscaip_pair_creator;
  plugin.handle = handle;
  register_style(&plugin, lmp);
}
