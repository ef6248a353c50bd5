/* -*- c++ -*- ----------------------------------------------------------
   AllScAIP exported model (TorchScript .pt or AOTInductor .pt2) for MD engines.

   Loads an `allscaip-export` file, checks it against its metadata.json
   (allscaip_model_info.h), and wraps the staged (domain decomposition) methods
   dd_prepare / dd_local / dd_global_project / dd_global_finish / dd_readout
   (TorchScript only) and the whole-system call (both formats).

   Independent of LAMMPS: every problem is reported by throwing
   allscaip::ModelError with a message that says what to change, so that the
   same code serves the pair style and the allscaip_metadata tool.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_MODEL_H
#define ALLSCAIP_MODEL_H

#include "allscaip_model_info.h"

#include <torch/script.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <memory>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace allscaip {

// "cpu", "cuda", "cuda:N" -> torch::Device; throws if CUDA is asked for but unavailable
torch::Device parse_device(const std::string &name);

class Model {
 public:
  // throws ModelError: missing/corrupt file, not an allscaip export, interface_version
  // mismatch, inconsistent metadata, an AOTInductor package compiled for another device
  Model(const std::string &path, const torch::Device &device);
  ~Model();

  const ModelInfo &info() const { return info_; }
  const std::string &path() const { return path_; }
  torch::Device device() const { return device_; }
  torch::ScalarType dtype() const { return dtype_; }
  bool is_aoti() const { return info_.format == "aoti"; }
  // an AOTInductor package without the whole-system model (a staged package built for the
  // engines' staged evaluation only) has has_whole_system() false
  bool has_whole_system() const { return !is_aoti() || aoti_ != nullptr; }
  // the AOTInductor metadata map of a .pt2 (holds "allscaip_metadata" and "AOTI_DEVICE_KEY")
  std::unordered_map<std::string, std::string> package_metadata() const;
  // the TorchScript module (throws ModelError for an AOTInductor package)
  const torch::jit::Module &module() const;

  // index of a chemical symbol in the model's element list, -1 if absent
  int element_index(const std::string &symbol) const;
  // "H, C, N, O"
  std::string element_list() const;

  // ---- staged interface (all tensors on device(); float tensors in dtype())
  struct Prepared {
    torch::Tensor index, bias, legendre_p, h, edges;
  };
  Prepared prepare(const torch::Tensor &vec, const torch::Tensor &mask, const torch::Tensor &index,
                   const torch::Tensor &numbers_all, int64_t charge, int64_t spin);
  // returns (h_c, edges)
  std::pair<torch::Tensor, torch::Tensor> local(int64_t layer, const torch::Tensor &h_all,
                                                const torch::Tensor &edges,
                                                const Prepared &geometry);
  // returns (q, k, v), each [heads, Nc, d]
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> global_project(int64_t layer,
                                                                         const torch::Tensor &h);
  torch::Tensor global_finish(int64_t layer, const torch::Tensor &h, const torch::Tensor &q,
                              const torch::Tensor &k_all, const torch::Tensor &v_all);
  // node encoding (info().encoding_range > 0): the pair basis [P, F] of pair vectors [P, 3]
  // (once per evaluation), and global_finish with the pair bias between owned row pair_row and
  // gathered row pair_col [P]
  bool has_encoding() const { return info_.encoding_range > 0.0; }
  torch::Tensor encoding_basis(const torch::Tensor &pair_vec);
  torch::Tensor global_finish_encoded(int64_t layer, const torch::Tensor &h, const torch::Tensor &q,
                                      const torch::Tensor &k_all, const torch::Tensor &v_all,
                                      const torch::Tensor &basis, const torch::Tensor &pair_row,
                                      const torch::Tensor &pair_col);
  // the same split in two around an attention the engine runs itself (blocked, memory linear
  // in atoms; allscaip_attention.h): the pair bias [P, heads] of block `layer` from the pair
  // vectors (first-order exact, O(P heads) memory), then the residual update from the
  // attention outputs o [heads, Nc, d] and the node FFN. Exports made before these methods
  // existed have only encoding_basis + global_finish_encoded (has_split_encoding() false)
  bool has_split_encoding() const { return has_split_encoding_; }
  torch::Tensor encoding_pair_bias(int64_t layer, const torch::Tensor &pair_vec);
  torch::Tensor global_finish_heads(int64_t layer, const torch::Tensor &h, const torch::Tensor &o);
  torch::Tensor readout(const torch::Tensor &h, const torch::Tensor &numbers_c);
  // core-repulsion energies [Nc] from the same vec/mask/index as prepare(); exports made
  // before dd_core existed have no core repulsion (has_core() is false)
  bool has_core() const { return has_core_; }
  torch::Tensor core(const torch::Tensor &vec, const torch::Tensor &mask, const torch::Tensor &index,
                     const torch::Tensor &numbers_all);

  // ---- whole-system call: (energy [], forces [N,3], virial [3,3], energies [N]); a model with
  // a node encoding also takes its pairs encoding_index [2,P] and encoding_shifts [P,3]
  // (ignored, and may be undefined, without one)
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor>
  whole_system(const torch::Tensor &positions, const torch::Tensor &numbers,
               const torch::Tensor &cell, const torch::Tensor &pbc,
               const torch::Tensor &edge_index, const torch::Tensor &cell_shifts, int64_t charge,
               int64_t spin, const torch::Tensor &encoding_index = torch::Tensor(),
               const torch::Tensor &encoding_shifts = torch::Tensor());

 private:
  std::string path_;
  torch::Device device_;
  torch::ScalarType dtype_;
  ModelInfo info_;
  torch::jit::Module module_;
  bool has_core_ = false;
  bool has_split_encoding_ = false;
  std::unique_ptr<torch::inductor::AOTIModelPackageLoader> aoti_;

  void load_torchscript();
  void load_aoti();
};

}    // namespace allscaip

#endif
