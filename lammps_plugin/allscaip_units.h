/* -*- c++ -*- ----------------------------------------------------------
   Unit conversion between an AllScAIP model (Angstrom, eV) and the LAMMPS
   units style of the simulation. Only styles whose length unit is the
   Angstrom are supported, so positions pass through unchanged:
     metal: energy eV        (factor 1)
     real:  energy kcal/mol  (factor 23.060547830619026 per eV)
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_UNITS_H
#define ALLSCAIP_UNITS_H

#include <string>

namespace allscaip {

class UnitConversion {
 public:
  // kcal/mol per eV (CODATA 2018 eV and thermochemical calorie)
  static constexpr double kEvToKcalMol = 23.060547830619026;

  // false if the style is not supported (see supported_styles())
  static bool is_supported(const std::string &unit_style);
  // "metal, real"
  static std::string supported_styles();

  // throws std::invalid_argument for unsupported styles
  explicit UnitConversion(const std::string &unit_style);

  const std::string &style() const { return style_; }
  double energy() const { return energy_; }    // model energy (eV) -> engine energy
  double force() const { return energy_; }     // eV/A -> engine force (length is A)
  double virial() const { return energy_; }    // eV -> engine energy (virial has energy units)
  double length() const { return 1.0; }        // engine length -> A

 private:
  std::string style_;
  double energy_ = 1.0;
};

}    // namespace allscaip

#endif
