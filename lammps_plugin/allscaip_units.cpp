/* ----------------------------------------------------------------------
   Unit conversion between AllScAIP models (Angstrom, eV) and LAMMPS units.
------------------------------------------------------------------------- */

#include "allscaip_units.h"

#include <stdexcept>

namespace allscaip {

bool UnitConversion::is_supported(const std::string &unit_style)
{
  return unit_style == "metal" || unit_style == "real";
}

std::string UnitConversion::supported_styles()
{
  return "metal, real";
}

UnitConversion::UnitConversion(const std::string &unit_style) : style_(unit_style)
{
  if (unit_style == "metal") {
    energy_ = 1.0;
  } else if (unit_style == "real") {
    energy_ = kEvToKcalMol;
  } else {
    throw std::invalid_argument("units " + unit_style + " not supported; use one of: " +
                                supported_styles());
  }
}

}    // namespace allscaip
