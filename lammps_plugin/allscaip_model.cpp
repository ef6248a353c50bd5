/* ----------------------------------------------------------------------
   AllScAIP exported model: loading, metadata parsing and validation.
------------------------------------------------------------------------- */

#include "allscaip_model.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/cuda.h>

#include <cctype>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>
#include <unordered_map>

namespace allscaip {

/* ----------------------------------------------------------------------
   minimal JSON reader (objects, arrays, strings, numbers, true/false/null);
   enough for metadata.json, which is written by Python's json module
------------------------------------------------------------------------- */

namespace {

struct Json {
  enum Kind { NUL, BOOL, NUMBER, STRING, ARRAY, OBJECT } kind = NUL;
  bool b = false;
  double num = 0.0;
  std::string str;
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> members;

  const Json *find(const std::string &key) const
  {
    if (kind != OBJECT) return nullptr;
    for (const auto &m : members)
      if (m.first == key) return &m.second;
    return nullptr;
  }
};

class JsonReader {
 public:
  explicit JsonReader(const std::string &text) : s_(text) {}

  Json parse()
  {
    Json v = value();
    skip_ws();
    if (pos_ != s_.size()) fail("trailing characters after the top-level value");
    return v;
  }

 private:
  const std::string &s_;
  size_t pos_ = 0;
  int depth_ = 0;

  [[noreturn]] void fail(const std::string &what) const
  {
    throw std::runtime_error("JSON error at offset " + std::to_string(pos_) + ": " + what);
  }
  void skip_ws()
  {
    while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
  }
  char peek()
  {
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end of text");
    return s_[pos_];
  }
  void expect(char c)
  {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  bool literal(const char *word)
  {
    size_t n = std::char_traits<char>::length(word);
    if (s_.compare(pos_, n, word) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }

  Json value()
  {
    if (++depth_ > 64) fail("nesting too deep");
    Json v;
    char c = peek();
    if (c == '{') {
      v.kind = Json::OBJECT;
      ++pos_;
      if (peek() == '}') {
        ++pos_;
      } else {
        while (true) {
          if (peek() != '"') fail("expected a string key");
          std::string key = string_body();
          expect(':');
          v.members.emplace_back(key, value());
          char d = peek();
          ++pos_;
          if (d == '}') break;
          if (d != ',') fail("expected ',' or '}'");
        }
      }
    } else if (c == '[') {
      v.kind = Json::ARRAY;
      ++pos_;
      if (peek() == ']') {
        ++pos_;
      } else {
        while (true) {
          v.items.push_back(value());
          char d = peek();
          ++pos_;
          if (d == ']') break;
          if (d != ',') fail("expected ',' or ']'");
        }
      }
    } else if (c == '"') {
      v.kind = Json::STRING;
      v.str = string_body();
    } else if (literal("true")) {
      v.kind = Json::BOOL;
      v.b = true;
    } else if (literal("false")) {
      v.kind = Json::BOOL;
    } else if (literal("null")) {
      v.kind = Json::NUL;
    } else if (c == '-' || std::isdigit(static_cast<unsigned char>(c))) {
      v.kind = Json::NUMBER;
      size_t start = pos_;
      while (pos_ < s_.size() && std::strchr("+-0123456789.eE", s_[pos_]) != nullptr) ++pos_;
      std::istringstream in(s_.substr(start, pos_ - start));
      in.imbue(std::locale::classic());
      if (!(in >> v.num)) fail("bad number");
    } else if (literal("NaN") || literal("Infinity") || literal("-Infinity")) {
      v.kind = Json::NUMBER;
      v.num = std::nan("");
    } else {
      fail(std::string("unexpected character '") + c + "'");
    }
    --depth_;
    return v;
  }

  static void put_utf8(std::string &out, unsigned cp)
  {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  unsigned hex4()
  {
    if (pos_ + 4 > s_.size()) fail("short \\u escape");
    unsigned cp = std::stoul(s_.substr(pos_, 4), nullptr, 16);
    pos_ += 4;
    return cp;
  }

  std::string string_body()
  {
    ++pos_;    // opening quote
    std::string out;
    while (true) {
      if (pos_ >= s_.size()) fail("unterminated string");
      char c = s_[pos_++];
      if (c == '"') break;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xD800 && cp < 0xDC00 && s_.compare(pos_, 2, "\\u") == 0) {
            pos_ += 2;
            unsigned lo = hex4();
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          put_utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
    return out;
  }
};

const Json &require(const Json &root, const std::string &key, Json::Kind kind,
                    const std::string &path)
{
  static const char *names[] = {"null", "boolean", "number", "string", "array", "object"};
  const Json *v = root.find(key);
  if (!v)
    throw ModelError("metadata.json of " + path + " has no \"" + key +
                     "\" entry; re-export the model with a current allscaip-export");
  if (v->kind != kind)
    throw ModelError("metadata.json of " + path + ": \"" + key + "\" should be a " +
                     names[kind] + "; re-export the model with a current allscaip-export");
  return *v;
}

int as_int(const Json &v, const std::string &key, const std::string &path)
{
  if (v.num != std::floor(v.num) || std::abs(v.num) > 2e9)
    throw ModelError("metadata.json of " + path + ": \"" + key + "\" should be an integer");
  return static_cast<int>(v.num);
}

bool ends_with(const std::string &s, const std::string &suffix)
{
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string first_line(const std::string &s)
{
  auto nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

}    // namespace

/* ---------------------------------------------------------------------- */

ModelInfo parse_metadata(const std::string &text, const std::string &path)
{
  Json root;
  try {
    root = JsonReader(text).parse();
  } catch (const std::runtime_error &e) {
    throw ModelError("metadata.json of " + path + " is not valid JSON (" + e.what() +
                     "); the file is damaged or not an allscaip export");
  }
  if (root.kind != Json::OBJECT)
    throw ModelError("metadata.json of " + path + " is not a JSON object");

  ModelInfo info;
  info.json = text;
  // the interface version first: everything else may legitimately differ in other versions
  info.interface_version =
      as_int(require(root, "interface_version", Json::NUMBER, path), "interface_version", path);
  if (info.interface_version != kInterfaceVersion)
    throw ModelError("model " + path + " has interface_version " +
                     std::to_string(info.interface_version) + " but this plugin build implements " +
                     "interface_version " + std::to_string(kInterfaceVersion) +
                     "; export the model with the allscaip-export matching this plugin, or rebuild "
                     "the plugin from the allscaip version that exported the model");

  if (const Json *v = root.find("allscaip_version"); v && v->kind == Json::STRING)
    info.allscaip_version = v->str;
  info.format = require(root, "format", Json::STRING, path).str;
  if (info.format != "torchscript" && info.format != "aoti")
    throw ModelError("metadata.json of " + path + " says format \"" + info.format +
                     "\"; this plugin build loads TorchScript (.pt) and AOTInductor (.pt2) "
                     "exports only");

  const Json &els = require(root, "elements", Json::ARRAY, path);
  const Json &zs = require(root, "atomic_numbers", Json::ARRAY, path);
  if (els.items.empty() || els.items.size() != zs.items.size())
    throw ModelError("metadata.json of " + path +
                     ": \"elements\" and \"atomic_numbers\" must be non-empty lists of equal length");
  for (size_t i = 0; i < els.items.size(); ++i) {
    if (els.items[i].kind != Json::STRING || zs.items[i].kind != Json::NUMBER)
      throw ModelError("metadata.json of " + path + ": malformed \"elements\"/\"atomic_numbers\"");
    info.elements.push_back(els.items[i].str);
    int z = as_int(zs.items[i], "atomic_numbers", path);
    if (z < 1 || z > 118)
      throw ModelError("metadata.json of " + path + ": atomic number " + std::to_string(z) +
                       " out of range 1..118");
    info.atomic_numbers.push_back(z);
  }

  info.cutoff = require(root, "cutoff", Json::NUMBER, path).num;
  if (!(info.cutoff > 0.0) || !std::isfinite(info.cutoff))
    throw ModelError("metadata.json of " + path + ": cutoff must be a positive number");
  info.ghost_cutoff = info.cutoff;
  if (const Json *v = root.find("ghost_cutoff"); v && v->kind == Json::NUMBER)
    info.ghost_cutoff = v->num;
  info.num_layers =
      as_int(require(root, "num_layers", Json::NUMBER, path), "num_layers", path);
  info.hidden = as_int(require(root, "hidden", Json::NUMBER, path), "hidden", path);
  if (info.num_layers < 1 || info.hidden < 1)
    throw ModelError("metadata.json of " + path + ": num_layers and hidden must be positive");
  if (const Json *v = root.find("heads"); v && v->kind == Json::NUMBER)
    info.heads = as_int(*v, "heads", path);
  info.node_attention = require(root, "node_attention", Json::BOOL, path).b;
  info.distance_bias = require(root, "distance_bias", Json::BOOL, path).b;
  info.supports_domain_decomposition =
      require(root, "supports_domain_decomposition", Json::BOOL, path).b;
  if (const Json *v = root.find("charge_spin"); v && v->kind == Json::BOOL) info.charge_spin = v->b;
  if (const Json *cfg = root.find("model_config"); cfg && cfg->kind == Json::OBJECT) {
    if (const Json *v = cfg->find("max_charge"); v && v->kind == Json::NUMBER)
      info.max_charge = as_int(*v, "max_charge", path);
    if (const Json *v = cfg->find("max_spin"); v && v->kind == Json::NUMBER)
      info.max_spin = as_int(*v, "max_spin", path);
  }
  info.dtype = require(root, "dtype", Json::STRING, path).str;
  if (info.dtype != "float32" && info.dtype != "float64")
    throw ModelError("metadata.json of " + path + ": dtype \"" + info.dtype +
                     "\" is not float32 or float64");
  if (const Json *v = root.find("device"); v && v->kind == Json::STRING) info.device = v->str;
  if (const Json *units = root.find("units"); units && units->kind == Json::OBJECT) {
    const Json *len = units->find("length");
    const Json *en = units->find("energy");
    if ((len && len->kind == Json::STRING && len->str != "angstrom") ||
        (en && en->kind == Json::STRING && en->str != "eV"))
      throw ModelError("metadata.json of " + path +
                       ": the model is not in angstrom/eV units, which this plugin assumes");
  }
  return info;
}

/* ---------------------------------------------------------------------- */

torch::Device parse_device(const std::string &name)
{
  torch::Device dev(torch::kCPU);
  try {
    dev = torch::Device(name);
  } catch (const c10::Error &) {
    throw ModelError("unknown device '" + name + "'; use cpu, cuda or cuda:N");
  }
  if (dev.is_cuda()) {
    if (!torch::cuda::is_available())
      throw ModelError("device '" + name +
                       "' requested but this libtorch sees no CUDA GPU (CPU-only build or no "
                       "device visible); use device cpu");
    const int n = static_cast<int>(torch::cuda::device_count());
    if (dev.has_index() && dev.index() >= n)
      throw ModelError("device '" + name + "' requested but only " + std::to_string(n) +
                       " CUDA device(s) are visible");
  } else if (!dev.is_cpu()) {
    throw ModelError("device '" + name + "' is not supported; use cpu, cuda or cuda:N");
  }
  return dev;
}

/* ---------------------------------------------------------------------- */

namespace {

void require_readable(const std::string &path)
{
  std::ifstream probe(path, std::ios::binary);
  if (!probe.good())
    throw ModelError("cannot open model file " + path +
                     " (missing or unreadable); check the path given to pair_coeff");
}

}    // namespace

Model::Model(const std::string &path, const torch::Device &device) :
    path_(path), device_(device), dtype_(torch::kFloat64)
{
  require_readable(path);
  if (ends_with(path, ".pt2"))
    load_aoti();
  else
    load_torchscript();
}

Model::~Model() = default;

const torch::jit::Module &Model::module() const
{
  if (aoti_)
    throw ModelError(path_ + " is an AOTInductor package: it has no TorchScript module");
  return module_;
}

std::unordered_map<std::string, std::string> Model::package_metadata() const
{
  if (!aoti_) throw ModelError(path_ + " is not an AOTInductor package");
  return aoti_->get_metadata();
}

void Model::load_torchscript()
{
  const std::string &path = path_;
  torch::jit::ExtraFilesMap extra{{"metadata.json", ""}};
  try {
    module_ = torch::jit::load(path, device_, extra);
  } catch (const std::exception &e) {
    throw ModelError("cannot load " + path + " as a TorchScript model (" + first_line(e.what()) +
                     "); the file is corrupt or not a TorchScript export (re-export it with "
                     "allscaip-export --format torchscript)");
  }
  if (extra["metadata.json"].empty())
    throw ModelError(path +
                     " is a TorchScript file but not an allscaip export (no metadata.json "
                     "inside); export the model with allscaip-export --format torchscript");
  info_ = parse_metadata(extra["metadata.json"], path);
  if (info_.format != "torchscript")
    throw ModelError(path + ": metadata says format \"" + info_.format +
                     "\" but the file is TorchScript; re-export it with allscaip-export");

  // the module's own attributes must agree with its metadata
  try {
    const auto attr_version = module_.attr("interface_version").toInt();
    if (attr_version != kInterfaceVersion)
      throw ModelError("model " + path + " implements interface_version " +
                       std::to_string(attr_version) + " but this plugin build implements " +
                       std::to_string(kInterfaceVersion) +
                       "; export the model with the matching allscaip-export");
    const double attr_cutoff = module_.attr("cutoff").toDouble();
    if (std::abs(attr_cutoff - info_.cutoff) > 1e-12 * std::max(1.0, attr_cutoff))
      throw ModelError("model " + path + ": metadata cutoff " + std::to_string(info_.cutoff) +
                       " differs from the module's cutoff " + std::to_string(attr_cutoff));
    if (module_.attr("num_layers").toInt() != info_.num_layers ||
        module_.attr("hidden").toInt() != info_.hidden ||
        module_.attr("node_attention").toBool() != info_.node_attention)
      throw ModelError("model " + path +
                       ": metadata (num_layers/hidden/node_attention) disagrees with the module");
    auto zs = module_.attr("atomic_numbers").toIntList();
    std::vector<int64_t> z(zs.begin(), zs.end());
    if (z != info_.atomic_numbers)
      throw ModelError("model " + path + ": metadata atomic_numbers disagree with the module");
  } catch (const c10::Error &e) {
    throw ModelError("model " + path + " lacks an attribute of the allscaip export interface (" +
                     first_line(e.what()) + "); re-export it with allscaip-export");
  }
  for (const char *name :
       {"dd_prepare", "dd_local", "dd_global_project", "dd_global_finish", "dd_readout"}) {
    if (!module_.find_method(name))
      throw ModelError("model " + path + " has no method " + name +
                       "; re-export it with allscaip-export --format torchscript");
  }

  has_core_ = module_.find_method("dd_core").has_value();

  dtype_ = info_.dtype == "float32" ? torch::kFloat32 : torch::kFloat64;
  for (const auto &p : module_.parameters()) {
    if (p.is_floating_point() && p.scalar_type() != dtype_)
      throw ModelError("model " + path + ": metadata says dtype " + info_.dtype +
                       " but its parameters are " + std::string(c10::toString(p.scalar_type())));
    p.requires_grad_(false);    // only gradients with respect to geometry are needed
  }
  module_.eval();
}

void Model::load_aoti()
{
  const std::string &path = path_;
  const std::string text = read_metadata_record(path);
  if (text.empty())
    throw ModelError(path + " is a .pt2 archive but not an allscaip export (no extra/metadata.json "
                     "inside); export the model with allscaip-export --format aoti");
  info_ = parse_metadata(text, path);
  if (info_.format != "aoti")
    throw ModelError(path + ": metadata says format \"" + info_.format +
                     "\" but the file is a .pt2 package; re-export it with allscaip-export");
  dtype_ = info_.dtype == "float32" ? torch::kFloat32 : torch::kFloat64;
  // a package runs only on the device type it was compiled for
  const std::string built_for = info_.device.empty() ? "cpu" : info_.device;
  const bool built_cuda = built_for.rfind("cuda", 0) == 0;
  if (built_cuda != device_.is_cuda())
    throw ModelError("AOTInductor package " + path + " was compiled for " + built_for +
                     " and cannot run on " + device_.str() + "; export it again with "
                     "allscaip-export --format aoti --device " + (device_.is_cuda() ? "cuda" : "cpu") +
                     ", or use the TorchScript export (.pt), which runs anywhere");
  try {
    const c10::DeviceIndex index = device_.is_cuda() && device_.has_index() ? device_.index() : -1;
    aoti_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path, "model", false, 1,
                                                                      index);
  } catch (const std::exception &e) {
    throw ModelError("cannot load AOTInductor package " + path + " (" + first_line(e.what()) +
                     "); the package is corrupt or was built by an incompatible torch; "
                     "re-export it with allscaip-export --format aoti");
  }
}

int Model::element_index(const std::string &symbol) const
{
  for (size_t i = 0; i < info_.elements.size(); ++i)
    if (info_.elements[i] == symbol) return static_cast<int>(i);
  return -1;
}

std::string Model::element_list() const
{
  std::string out;
  for (size_t i = 0; i < info_.elements.size(); ++i) out += (i ? " " : "") + info_.elements[i];
  return out;
}

/* ---------------------------------------------------------------------- */

Model::Prepared Model::prepare(const torch::Tensor &vec, const torch::Tensor &mask,
                               const torch::Tensor &index, const torch::Tensor &numbers_all,
                               int64_t charge, int64_t spin)
{
  auto out = module_.get_method("dd_prepare")({vec, mask, index, numbers_all, charge, spin});
  auto t = out.toTuple();
  return {t->elements()[0].toTensor(), t->elements()[1].toTensor(), t->elements()[2].toTensor(),
          t->elements()[3].toTensor(), t->elements()[4].toTensor()};
}

std::pair<torch::Tensor, torch::Tensor> Model::local(int64_t layer, const torch::Tensor &h_all,
                                                     const torch::Tensor &edges,
                                                     const Prepared &g)
{
  auto out = module_.get_method("dd_local")({layer, h_all, edges, g.index, g.legendre_p, g.bias});
  auto t = out.toTuple();
  return {t->elements()[0].toTensor(), t->elements()[1].toTensor()};
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> Model::global_project(
    int64_t layer, const torch::Tensor &h)
{
  auto out = module_.get_method("dd_global_project")({layer, h});
  auto t = out.toTuple();
  return {t->elements()[0].toTensor(), t->elements()[1].toTensor(), t->elements()[2].toTensor()};
}

torch::Tensor Model::global_finish(int64_t layer, const torch::Tensor &h, const torch::Tensor &q,
                                   const torch::Tensor &k_all, const torch::Tensor &v_all)
{
  return module_.get_method("dd_global_finish")({layer, h, q, k_all, v_all}).toTensor();
}

torch::Tensor Model::readout(const torch::Tensor &h, const torch::Tensor &numbers_c)
{
  return module_.get_method("dd_readout")({h, numbers_c}).toTensor();
}

torch::Tensor Model::core(const torch::Tensor &vec, const torch::Tensor &mask,
                          const torch::Tensor &index, const torch::Tensor &numbers_all)
{
  return module_.get_method("dd_core")({vec, mask, index, numbers_all}).toTensor();
}

std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor> Model::whole_system(
    const torch::Tensor &positions, const torch::Tensor &numbers, const torch::Tensor &cell,
    const torch::Tensor &pbc, const torch::Tensor &edge_index, const torch::Tensor &cell_shifts,
    int64_t charge, int64_t spin)
{
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(device_);
  if (aoti_) {
    std::vector<torch::Tensor> in{positions.contiguous(), numbers.contiguous(), cell.contiguous(),
                                  pbc.contiguous(), edge_index.contiguous(),
                                  cell_shifts.contiguous(), torch::tensor(charge, opts),
                                  torch::tensor(spin, opts)};
    auto out = aoti_->run(in);
    if (out.size() != 4)
      throw ModelError("AOTInductor package " + path_ + " returned " + std::to_string(out.size()) +
                       " outputs instead of 4 (energy, forces, virial, energies)");
    return {out[0], out[1], out[2], out[3]};
  }
  auto out = module_.forward({positions, numbers, cell, pbc, edge_index, cell_shifts,
                              torch::tensor(charge, opts), torch::tensor(spin, opts)});
  auto t = out.toTuple();
  return {t->elements()[0].toTensor(), t->elements()[1].toTensor(), t->elements()[2].toTensor(),
          t->elements()[3].toTensor()};
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

}    // namespace allscaip
