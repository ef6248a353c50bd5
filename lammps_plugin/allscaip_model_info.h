/* -*- c++ -*- ----------------------------------------------------------
   The metadata.json of an allscaip-export file (TorchScript .pt or
   AOTInductor .pt2): reading it from the archive, parsing it (nlohmann
   json) and validating the fields an engine needs.

   Independent of LAMMPS: every problem is reported by throwing
   allscaip::ModelError with a message that names the key and says what to
   change, so that the same code serves the pair style and the
   allscaip_metadata tool.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_MODEL_INFO_H
#define ALLSCAIP_MODEL_INFO_H

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace allscaip {

// calling convention of the exported modules this build understands
// (must equal allscaip_export.metadata.INTERFACE_VERSION)
constexpr int kInterfaceVersion = 1;
// the same plus the node encoding's staged methods (dd_encoding_basis, dd_global_finish_encoded);
// carried only by models with a node encoding (allscaip_export.metadata.ENCODING_INTERFACE_VERSION)
constexpr int kEncodingInterfaceVersion = 2;

// min_distance of exports without the key (Angstrom): below every chemical bond (H2: 0.74 A)
constexpr double kDefaultMinDistance = 0.5;

class ModelError : public std::runtime_error {
 public:
  explicit ModelError(const std::string &msg) : std::runtime_error(msg) {}
};

// the fields of metadata.json an engine needs, already validated
struct ModelInfo {
  std::string json;                       // metadata.json verbatim
  std::string allscaip_version;
  std::string format;                     // "torchscript" | "aoti"
  int interface_version = 0;
  std::vector<std::string> elements;      // chemical symbols, model order
  std::vector<int64_t> atomic_numbers;    // same order
  double cutoff = 0.0;                    // Angstrom
  double ghost_cutoff = 0.0;              // Angstrom
  int num_layers = 0;
  int hidden = 0;
  int heads = 0;
  bool node_attention = true;
  bool distance_bias = false;
  bool charge_spin = true;
  bool supports_domain_decomposition = false;
  std::string node_encoding = "none";     // "none" | "sinc_pairs"
  // "dd": our models' dd_* methods; "fairchem": a converted fairchem AllScAIP's submodule
  // "stages" (allscaip_fairchem_staged.h); "dd_vjp": a staged AOTInductor package, its stages
  // and their VJPs (allscaip_staged_pt2.h)
  std::string staged_interface = "dd";
  // a staged package: the charge and spin its stages were compiled for, and whether it also
  // holds the whole-system model (every other .pt2 does)
  int staged_charge = 0;
  int staged_spin = 1;
  bool whole_system = true;
  double encoding_range = 0.0;            // Angstrom; > 0 exactly when the model has a node encoding
  int max_charge = 0;                     // |charge| allowed (0: unknown)
  int max_spin = 0;                       // spin multiplicity allowed (0: unknown)
  // Angstrom: two atoms closer than this stop the run (a fraction of the training data's
  // shortest contact); exports made before the key existed get kDefaultMinDistance
  double min_distance = 0.0;
  std::string dtype;                      // "float32" | "float64"
  std::string device;                     // device it was exported for
};

// parse + validate a metadata.json string; `path` names the file in error messages
ModelInfo parse_metadata(const std::string &json, const std::string &path);

// the raw metadata.json record of an export (.pt: extra file; .pt2: archive record
// extra/metadata.json); empty if the archive has none. Throws ModelError if the file is not
// a readable archive.
std::string read_metadata_record(const std::string &path);

// read only the metadata (validated) of a model file (.pt or .pt2) without loading the model
ModelInfo read_model_info(const std::string &path);

// throws ModelError naming pair_coeff if the file cannot be opened
void require_readable(const std::string &path);

// the first line of an exception message (torch's messages carry a backtrace after it)
std::string first_line(const std::string &text);

}    // namespace allscaip

#endif
