// Shared by the CPU kernels that use AMX tiles (gemm.cc, panel_matmul.cc).
//
// Linux gives a process the (8 KiB) AMX tile register state only after it asks for it with
// arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); the permission is process-wide, but each
// thread loads its own tile configuration, and other libraries in the process (YNNPACK, oneDNN)
// load theirs on the same threads, so a kernel configures the tiles on every call and releases
// them before it returns.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__x86_64__) && defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace llm_cpu {

// Asks Linux for the AMX tile state once per process; false where it is refused or absent.
inline bool RequestAmx() {
#if defined(__x86_64__) && defined(__linux__)
  static const bool granted = [] {
    constexpr long kArchReqXcompPerm = 0x1023;
    constexpr long kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return granted;
#else
  return false;
#endif
}

// The 64-byte operand of ldtilecfg (palette 1).
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};

  // Tile `t` holds `rows` rows of `bytes` bytes each.
  void Set(int t, int tile_rows, int bytes) {
    rows[t] = static_cast<uint8_t>(tile_rows);
    colsb[t] = static_cast<uint16_t>(bytes);
  }
};

}  // namespace llm_cpu
