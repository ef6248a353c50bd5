/* ----------------------------------------------------------------------
   allscaip_metadata model.pt|model.pt2 [--json]

   Loads an allscaip-export file (TorchScript .pt or AOTInductor .pt2) with
   libtorch, validates it as the LAMMPS plugin does, and prints its
   metadata.json and the values engines read (elements, cutoff, layers,
   hidden, ...). Exit status 0 if the model is usable by this plugin build,
   1 otherwise (message on stderr).
------------------------------------------------------------------------- */

#include "allscaip_model.h"

#include <cstring>
#include <iostream>

int main(int argc, char **argv)
{
  bool json_only = false;
  const char *path = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--json") == 0)
      json_only = true;
    else if (std::strcmp(argv[i], "-h") == 0 || std::strcmp(argv[i], "--help") == 0) {
      std::cout << "usage: allscaip_metadata model.pt|model.pt2 [--json]\n";
      return 0;
    } else
      path = argv[i];
  }
  if (!path) {
    std::cerr << "usage: allscaip_metadata model.pt|model.pt2 [--json]\n";
    return 2;
  }
  try {
    allscaip::Model model(path, torch::Device(torch::kCPU));
    const allscaip::ModelInfo &info = model.info();
    if (json_only) {
      std::cout << info.json << "\n";
      return 0;
    }
    std::cout << "metadata.json:\n" << info.json << "\n\n";
    std::cout << "file:                 " << path << "\n";
    std::cout << "allscaip_version:     " << info.allscaip_version << "\n";
    std::cout << "interface_version:    " << info.interface_version
              << " (this build: " << allscaip::kInterfaceVersion << ")\n";
    std::cout << "elements:             " << model.element_list() << "\n";
    std::cout << "atomic_numbers:      ";
    for (auto z : info.atomic_numbers) std::cout << " " << z;
    std::cout << "\n";
    std::cout << "cutoff:               " << info.cutoff << " A\n";
    std::cout << "num_layers:           " << info.num_layers << "\n";
    std::cout << "hidden:               " << info.hidden << "\n";
    std::cout << "node_attention:       " << (info.node_attention ? "true" : "false") << "\n";
    std::cout << "distance_bias:        " << (info.distance_bias ? "true" : "false") << "\n";
    std::cout << "domain_decomposition: "
              << (info.supports_domain_decomposition ? "supported" : "not supported") << "\n";
    std::cout << "dtype:                " << info.dtype << "\n";
    std::cout << "format:               " << info.format << "\n";
    if (info.staged_interface == "dd_vjp")
      std::cout << "staged package:       stages and VJPs for charge " << info.staged_charge << ", spin "
                << info.staged_spin << (info.whole_system ? ", with" : ", without")
                << " the whole-system model\n";
    if (model.is_aoti() && !model.has_whole_system()) {
      std::cout << "package:              staged stages only (staged_interface " << info.staged_interface
                << "), no whole-system model\n";
      return 0;
    }
    if (model.is_aoti()) {
      // the copy in the AOTInductor metadata map must equal the archive record
      auto map = model.package_metadata();
      auto it = map.find("allscaip_metadata");
      if (it == map.end() || it->second != info.json) {
        std::cerr << "allscaip_metadata: the package's AOTInductor metadata map lacks or disagrees "
                     "with extra/metadata.json; re-export the model\n";
        return 1;
      }
      std::cout << "package metadata map: allscaip_metadata equal to extra/metadata.json, "
                << "AOTI_DEVICE_KEY=" << map["AOTI_DEVICE_KEY"] << "\n";
      return 0;
    }
    // the same values as read from the module's attributes
    const auto &m = model.module();
    std::cout << "module attributes:    cutoff=" << m.attr("cutoff").toDouble()
              << " atomic_numbers=" << m.attr("atomic_numbers")
              << " num_layers=" << m.attr("num_layers").toInt()
              << " hidden=" << m.attr("hidden").toInt()
              << " node_attention=" << (m.attr("node_attention").toBool() ? "true" : "false")
              << " interface_version=" << m.attr("interface_version").toInt() << "\n";
  } catch (const std::exception &e) {
    std::cerr << "allscaip_metadata: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
