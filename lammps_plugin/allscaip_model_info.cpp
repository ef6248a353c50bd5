/* ----------------------------------------------------------------------
   metadata.json of an allscaip export: reading, parsing, validation.
------------------------------------------------------------------------- */

#include "allscaip_model_info.h"

#include <caffe2/serialize/inline_container.h>

// nlohmann json: the copy LAMMPS ships (include/lammps/nlohmann, its namespace renamed to
// nlohmann_lmp) or a system nlohmann_json; lammps_plugin/CMakeLists.txt picks the directory
#include "nlohmann/json.hpp"

#include <cmath>
#include <fstream>
#include <memory>

namespace allscaip {

namespace {

#ifdef LMP_NLOHMANN_JSON_VERSION_MAJOR
using Json = nlohmann_lmp::json;
#else
using Json = nlohmann::json;
#endif

// Python's json module writes the non-finite floats nan, inf and -inf as the bare words NaN,
// Infinity and -Infinity, which strict JSON (and nlohmann json) rejects. Outside strings they
// become null here, so that such values in entries the plugin does not read (model_config,
// core_radius, ...) do not make a model unreadable; in the entries it reads, null is an error
// or "not given", as a non-finite number would be.
std::string python_json_to_strict(const std::string &text)
{
  static const char *const kNonFinite[] = {"-Infinity", "Infinity", "NaN"};
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size())
        out += text[++i];
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const char *word : kNonFinite) {
      const size_t n = std::char_traits<char>::length(word);
      if (text.compare(i, n, word) == 0) {
        out += "null";
        i += n - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

// the JSON types metadata.json entries have (named as in the error messages)
enum class Kind { Boolean, Number, String, Array, Object };

const char *kind_name(Kind kind)
{
  switch (kind) {
    case Kind::Boolean: return "boolean";
    case Kind::Number: return "number";
    case Kind::String: return "string";
    case Kind::Array: return "array";
    case Kind::Object: return "object";
  }
  return "value";
}

bool has_kind(const Json &value, Kind kind)
{
  switch (kind) {
    case Kind::Boolean: return value.is_boolean();
    case Kind::Number: return value.is_number();
    case Kind::String: return value.is_string();
    case Kind::Array: return value.is_array();
    case Kind::Object: return value.is_object();
  }
  return false;
}

// the entry `key` of an object if it is there and of the given kind, else nullptr
// (optional entries: absent or of another type both mean "not given")
const Json *optional(const Json &object, const char *key, Kind kind)
{
  auto it = object.find(key);
  if (it == object.end() || !has_kind(*it, kind)) return nullptr;
  return &*it;
}

// the entry `key` of the top-level object; absent or of another type is an error naming the key
const Json &require(const Json &root, const char *key, Kind kind, const std::string &path)
{
  auto it = root.find(key);
  if (it == root.end())
    throw ModelError("metadata.json of " + path + " has no \"" + key +
                     "\" entry; re-export the model with a current allscaip-export");
  if (!has_kind(*it, kind))
    throw ModelError("metadata.json of " + path + ": \"" + key + "\" should be a " +
                     kind_name(kind) + "; re-export the model with a current allscaip-export");
  return *it;
}

// a JSON number that must hold an integer (Python writes 3, a hand-edited file may say 3.0)
int as_int(const Json &value, const char *key, const std::string &path)
{
  const double number = value.get<double>();
  if (number != std::floor(number) || std::abs(number) > 2e9)
    throw ModelError("metadata.json of " + path + ": \"" + key + "\" should be an integer");
  return static_cast<int>(number);
}

int require_int(const Json &root, const char *key, const std::string &path)
{
  return as_int(require(root, key, Kind::Number, path), key, path);
}

bool require_bool(const Json &root, const char *key, const std::string &path)
{
  return require(root, key, Kind::Boolean, path).get<bool>();
}

std::string require_string(const Json &root, const char *key, const std::string &path)
{
  return require(root, key, Kind::String, path).get<std::string>();
}

void read_elements(const Json &root, const std::string &path, ModelInfo &info)
{
  const Json &els = require(root, "elements", Kind::Array, path);
  const Json &zs = require(root, "atomic_numbers", Kind::Array, path);
  if (els.empty() || els.size() != zs.size())
    throw ModelError("metadata.json of " + path +
                     ": \"elements\" and \"atomic_numbers\" must be non-empty lists of equal length");
  for (size_t i = 0; i < els.size(); ++i) {
    if (!els[i].is_string() || !zs[i].is_number())
      throw ModelError("metadata.json of " + path + ": malformed \"elements\"/\"atomic_numbers\"");
    info.elements.push_back(els[i].get<std::string>());
    const int z = as_int(zs[i], "atomic_numbers", path);
    if (z < 1 || z > 118)
      throw ModelError("metadata.json of " + path + ": atomic number " + std::to_string(z) +
                       " out of range 1..118");
    info.atomic_numbers.push_back(z);
  }
}

}    // namespace

/* ---------------------------------------------------------------------- */

ModelInfo parse_metadata(const std::string &text, const std::string &path)
{
  Json root;
  try {
    root = Json::parse(python_json_to_strict(text));
  } catch (const Json::parse_error &e) {
    throw ModelError("metadata.json of " + path + " is not valid JSON (" + e.what() +
                     "); the file is damaged or not an allscaip export");
  }
  if (!root.is_object()) throw ModelError("metadata.json of " + path + " is not a JSON object");

  ModelInfo info;
  info.json = text;
  // the interface version first: everything else may legitimately differ in other versions
  info.interface_version = require_int(root, "interface_version", path);
  if (info.interface_version != kInterfaceVersion && info.interface_version != kEncodingInterfaceVersion)
    throw ModelError("model " + path + " has interface_version " +
                     std::to_string(info.interface_version) + " but this plugin build implements " +
                     "interface_version " + std::to_string(kInterfaceVersion) + " (and " +
                     std::to_string(kEncodingInterfaceVersion) + " for node-encoding models)" +
                     "; export the model with the allscaip-export matching this plugin, or rebuild "
                     "the plugin from the allscaip version that exported the model");

  if (const Json *v = optional(root, "allscaip_version", Kind::String))
    info.allscaip_version = v->get<std::string>();
  info.format = require_string(root, "format", path);
  if (info.format != "torchscript" && info.format != "aoti")
    throw ModelError("metadata.json of " + path + " says format \"" + info.format +
                     "\"; this plugin build loads TorchScript (.pt) and AOTInductor (.pt2) "
                     "exports only");

  read_elements(root, path, info);

  info.cutoff = require(root, "cutoff", Kind::Number, path).get<double>();
  if (!(info.cutoff > 0.0) || !std::isfinite(info.cutoff))
    throw ModelError("metadata.json of " + path + ": cutoff must be a positive number");
  info.ghost_cutoff = info.cutoff;
  if (const Json *v = optional(root, "ghost_cutoff", Kind::Number)) info.ghost_cutoff = v->get<double>();
  info.num_layers = require_int(root, "num_layers", path);
  info.hidden = require_int(root, "hidden", path);
  if (info.num_layers < 1 || info.hidden < 1)
    throw ModelError("metadata.json of " + path + ": num_layers and hidden must be positive");
  if (const Json *v = optional(root, "heads", Kind::Number)) info.heads = as_int(*v, "heads", path);
  info.node_attention = require_bool(root, "node_attention", path);
  info.distance_bias = require_bool(root, "distance_bias", path);
  info.supports_domain_decomposition = require_bool(root, "supports_domain_decomposition", path);
  if (const Json *v = optional(root, "node_encoding", Kind::String))
    info.node_encoding = v->get<std::string>();
  if (const Json *v = optional(root, "staged_interface", Kind::String))
    info.staged_interface = v->get<std::string>();
  if (info.staged_interface != "dd" && info.staged_interface != "fairchem" &&
      info.staged_interface != "dd_vjp")
    throw ModelError("metadata.json of " + path + ": staged_interface \"" + info.staged_interface +
                     "\" is not known to this plugin build (dd, fairchem, dd_vjp); rebuild the plugin "
                     "from the allscaip version that exported the model");
  if (info.staged_interface == "dd_vjp") {
    if (info.format != "aoti" || !info.supports_domain_decomposition)
      throw ModelError("metadata.json of " + path + ": staged_interface \"dd_vjp\" belongs to an "
                       "AOTInductor package with supports_domain_decomposition; re-export it with "
                       "allscaip-export --format aoti --staged");
    info.staged_charge = require_int(root, "staged_charge", path);
    info.staged_spin = require_int(root, "staged_spin", path);
  }
  if (const Json *v = optional(root, "whole_system", Kind::Boolean)) info.whole_system = v->get<bool>();
  if (const Json *v = optional(root, "encoding_range", Kind::Number))
    info.encoding_range = v->get<double>();
  if (info.node_encoding != "none" && info.node_encoding != "sinc_pairs")
    throw ModelError("metadata.json of " + path + ": node_encoding \"" + info.node_encoding +
                     "\" is not known to this plugin build (none, sinc_pairs); rebuild the plugin "
                     "from the allscaip version that exported the model");
  const bool encoded = info.node_encoding != "none";
  if (encoded != (info.interface_version == kEncodingInterfaceVersion) ||
      encoded != (info.encoding_range > 0.0) || !std::isfinite(info.encoding_range))
    throw ModelError("metadata.json of " + path + ": node_encoding \"" + info.node_encoding +
                     "\", encoding_range " + std::to_string(info.encoding_range) +
                     " and interface_version " + std::to_string(info.interface_version) +
                     " disagree (a node-encoding model has interface_version " +
                     std::to_string(kEncodingInterfaceVersion) +
                     " and a positive range); re-export it with allscaip-export");
  if (const Json *v = optional(root, "charge_spin", Kind::Boolean)) info.charge_spin = v->get<bool>();
  if (const Json *cfg = optional(root, "model_config", Kind::Object)) {
    if (const Json *v = optional(*cfg, "max_charge", Kind::Number))
      info.max_charge = as_int(*v, "max_charge", path);
    if (const Json *v = optional(*cfg, "max_spin", Kind::Number))
      info.max_spin = as_int(*v, "max_spin", path);
  }
  info.min_distance = kDefaultMinDistance;
  if (const Json *v = optional(root, "min_distance", Kind::Number)) info.min_distance = v->get<double>();
  if (!(info.min_distance >= 0.0) || !std::isfinite(info.min_distance))
    throw ModelError("metadata.json of " + path + ": min_distance must be a number >= 0 (Angstrom), "
                     "got " + std::to_string(info.min_distance) + "; re-export it with allscaip-export");
  info.dtype = require_string(root, "dtype", path);
  if (info.dtype != "float32" && info.dtype != "float64")
    throw ModelError("metadata.json of " + path + ": dtype \"" + info.dtype +
                     "\" is not float32 or float64");
  if (const Json *v = optional(root, "device", Kind::String)) info.device = v->get<std::string>();
  if (const Json *units = optional(root, "units", Kind::Object)) {
    const Json *len = optional(*units, "length", Kind::String);
    const Json *en = optional(*units, "energy", Kind::String);
    if ((len && len->get<std::string>() != "angstrom") || (en && en->get<std::string>() != "eV"))
      throw ModelError("metadata.json of " + path +
                       ": the model is not in angstrom/eV units, which this plugin assumes");
  }
  return info;
}

/* ---------------------------------------------------------------------- */

std::string read_metadata_record(const std::string &path)
{
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> reader;
  try {
    reader = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
  } catch (const std::exception &e) {
    throw ModelError("cannot read " + path + " as a model archive (" + first_line(e.what()) +
                     "); the file is corrupt or not an allscaip export");
  }
  // both formats keep it at <archive>/extra/metadata.json; the reader strips <archive>/
  const char *name = "extra/metadata.json";
  if (!reader->hasRecord(name)) return "";
  auto [data, size] = reader->getRecord(name);
  return std::string(static_cast<const char *>(data.get()), size);
}

ModelInfo read_model_info(const std::string &path)
{
  require_readable(path);
  const std::string text = read_metadata_record(path);
  if (text.empty())
    throw ModelError(path + " is not an allscaip export (no extra/metadata.json inside)");
  return parse_metadata(text, path);
}

void require_readable(const std::string &path)
{
  std::ifstream probe(path, std::ios::binary);
  if (!probe.good())
    throw ModelError("cannot open model file " + path +
                     " (missing or unreadable); check the path given to pair_coeff");
}

std::string first_line(const std::string &text)
{
  auto nl = text.find('\n');
  return nl == std::string::npos ? text : text.substr(0, nl);
}

}    // namespace allscaip
