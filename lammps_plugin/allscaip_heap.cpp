/* ----------------------------------------------------------------------
   Keep freed tensor memory in the process heap (see allscaip_heap.h).
------------------------------------------------------------------------- */

#include "allscaip_heap.h"

#include <cstdlib>
#include <cstring>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace allscaip {

namespace {
constexpr int kTrimThreshold = 1 << 30;    // bytes of free heap top kept before trimming
constexpr int kMmapThreshold = 1 << 30;    // only allocations above 1 GiB get their own mapping
bool applied = false;
}    // namespace

bool keep_heap_resident(std::string &note)
{
  if (applied) {
    note.clear();    // nothing new to report
    return false;
  }
  const char *switch_env = std::getenv("ALLSCAIP_MALLOC_TUNING");
  if (switch_env && std::strcmp(switch_env, "0") == 0) {
    note = "off (ALLSCAIP_MALLOC_TUNING=0)";
    return false;
  }
  if (std::getenv("MALLOC_TRIM_THRESHOLD_") || std::getenv("MALLOC_MMAP_THRESHOLD_")) {
    note = "left to the MALLOC_*_THRESHOLD_ environment variables";
    return false;
  }
#if defined(__GLIBC__)
  if (mallopt(M_TRIM_THRESHOLD, kTrimThreshold) != 1 || mallopt(M_MMAP_THRESHOLD, kMmapThreshold) != 1) {
    note = "mallopt refused the settings";
    return false;
  }
  applied = true;
  note = "glibc malloc keeps up to 1 GiB of freed heap (set ALLSCAIP_MALLOC_TUNING=0 to turn off)";
  return true;
#else
  note = "not glibc; allocator left as it is";
  return false;
#endif
}

}    // namespace allscaip
