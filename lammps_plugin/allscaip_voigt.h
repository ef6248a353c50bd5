/* -*- c++ -*- ----------------------------------------------------------
   The virial matrix W (3x3, row-major) as LAMMPS's six components
   xx yy zz xy xz yz: LAMMPS's virial is symmetric, so the off-diagonal pairs
   are averaged.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_VOIGT_H
#define ALLSCAIP_VOIGT_H

namespace allscaip {

inline void symmetric_voigt(const double w[9], double v[6])
{
  v[0] = w[0];
  v[1] = w[4];
  v[2] = w[8];
  v[3] = 0.5 * (w[1] + w[3]);
  v[4] = 0.5 * (w[2] + w[6]);
  v[5] = 0.5 * (w[5] + w[7]);
}

}    // namespace allscaip

#endif
