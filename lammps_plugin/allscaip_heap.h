/* -*- c++ -*- ----------------------------------------------------------
   Keep freed tensor memory in the process heap between MD steps.

   Each force call allocates and frees the same few MB of tensors. With
   glibc's defaults the freed top of the heap is handed back to the kernel
   (brk shrinks) and the next step faults every page in again, zeroed: with
   an AOTInductor package on a 64-water box on one core that was 30 % of
   the run time, all of it in the kernel. Raising the trim threshold keeps the pages resident.
------------------------------------------------------------------------- */

#ifndef ALLSCAIP_HEAP_H
#define ALLSCAIP_HEAP_H

#include <string>

namespace allscaip {

// Raise glibc's malloc trim threshold (1 GiB) and its mmap threshold (1 GiB:
// no tensor below that gets a mapping of its own), once per process. Does nothing, and
// says why in `note`, when the C library is not glibc, when the user set
// MALLOC_TRIM_THRESHOLD_ or MALLOC_MMAP_THRESHOLD_ themselves, or when
// ALLSCAIP_MALLOC_TUNING=0. Returns true when the settings were applied by
// this call; `note` is empty when an earlier call already applied them.
bool keep_heap_resident(std::string &note);

}    // namespace allscaip

#endif
