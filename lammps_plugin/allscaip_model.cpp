/* ----------------------------------------------------------------------
   AllScAIP exported model: loading, checks against its metadata, calls.
------------------------------------------------------------------------- */

#include "allscaip_model.h"

#include <torch/cuda.h>

#include <algorithm>
#include <cmath>

namespace allscaip {

namespace {

bool ends_with(const std::string &s, const std::string &suffix)
{
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}    // namespace

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
  if (!aoti_)
    throw ModelError(path_ + " is not an AOTInductor package with a whole-system model");
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
    if (attr_version != info_.interface_version)
      throw ModelError("model " + path + " implements interface_version " +
                       std::to_string(attr_version) + " but its metadata says " +
                       std::to_string(info_.interface_version) +
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

  if (info_.encoding_range > 0.0) {
    for (const char *name : {"dd_encoding_basis", "dd_global_finish_encoded"}) {
      if (!module_.find_method(name))
        throw ModelError("model " + path + " has a node encoding but no method " + name +
                         "; re-export it with allscaip-export --format torchscript");
    }
  }

  has_core_ = module_.find_method("dd_core").has_value();
  has_split_encoding_ = info_.encoding_range > 0.0 &&
                        module_.find_method("dd_encoding_pair_bias").has_value() &&
                        module_.find_method("dd_global_finish_heads").has_value();

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
  if (!info_.whole_system) return;    // a staged package without it (allscaip_staged_pt2.h)
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

torch::Tensor Model::encoding_basis(const torch::Tensor &pair_vec)
{
  return module_.get_method("dd_encoding_basis")({pair_vec}).toTensor();
}

torch::Tensor Model::global_finish_encoded(int64_t layer, const torch::Tensor &h,
                                           const torch::Tensor &q, const torch::Tensor &k_all,
                                           const torch::Tensor &v_all, const torch::Tensor &basis,
                                           const torch::Tensor &pair_row,
                                           const torch::Tensor &pair_col)
{
  return module_.get_method("dd_global_finish_encoded")(
                    {layer, h, q, k_all, v_all, basis, pair_row, pair_col})
      .toTensor();
}

torch::Tensor Model::encoding_pair_bias(int64_t layer, const torch::Tensor &pair_vec)
{
  return module_.get_method("dd_encoding_pair_bias")({layer, pair_vec}).toTensor();
}

torch::Tensor Model::global_finish_heads(int64_t layer, const torch::Tensor &h,
                                         const torch::Tensor &o)
{
  return module_.get_method("dd_global_finish_heads")({layer, h, o}).toTensor();
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
    int64_t charge, int64_t spin, const torch::Tensor &encoding_index,
    const torch::Tensor &encoding_shifts)
{
  auto opts = torch::TensorOptions().dtype(torch::kInt64).device(device_);
  const bool encoded = has_encoding();
  if (encoded && (!encoding_index.defined() || !encoding_shifts.defined()))
    throw ModelError("model " + path_ + " has a node encoding: its whole-system call needs the "
                     "encoding pairs (internal error of the caller)");
  if (is_aoti() && !aoti_)
    throw ModelError("AOTInductor package " + path_ + " holds only the staged stages, no "
                     "whole-system model; re-export it with allscaip-export --format aoti --staged "
                     "(which writes both)");
  if (aoti_) {
    std::vector<torch::Tensor> in{positions.contiguous(), numbers.contiguous(), cell.contiguous(),
                                  pbc.contiguous(), edge_index.contiguous(),
                                  cell_shifts.contiguous(), torch::tensor(charge, opts),
                                  torch::tensor(spin, opts)};
    if (encoded) {
      in.push_back(encoding_index.contiguous());
      in.push_back(encoding_shifts.contiguous());
    }
    auto out = aoti_->run(in);
    if (out.size() != 4)
      throw ModelError("AOTInductor package " + path_ + " returned " + std::to_string(out.size()) +
                       " outputs instead of 4 (energy, forces, virial, energies)");
    return {out[0], out[1], out[2], out[3]};
  }
  std::vector<torch::jit::IValue> in{positions,  numbers, cell, pbc, edge_index, cell_shifts,
                                     torch::tensor(charge, opts), torch::tensor(spin, opts)};
  if (encoded) {
    in.emplace_back(encoding_index);
    in.emplace_back(encoding_shifts);
  }
  auto out = module_.forward(in);
  auto t = out.toTuple();
  return {t->elements()[0].toTensor(), t->elements()[1].toTensor(), t->elements()[2].toTensor(),
          t->elements()[3].toTensor()};
}

}    // namespace allscaip
