// y (M, P*16) = x (M, K) @ W, with W pre-packed as P contiguous panels of 16 columns, (P, K, 16),
// all f32: the CPU decode matmul of llm.generate.panel_matmul (why it exists is explained there).
//
// Each panel (K x 16, 32 KiB at K = 512) is streamed from memory once and multiplied by every row
// of x in register tiles of up to 6 rows x 16 columns (12 accumulators, FMA over K), while the
// next panel is prefetched. Panels are split into chunks that the calling thread and XLA's
// intra-op thread pool claim from an atomic counter; the caller works until no chunk is left and
// then waits only for chunks another thread has already started, so a call never waits on a
// pool task that has not begun (two such calls running at once on a two-thread pool cannot
// deadlock).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kWidth = 16;    // columns per panel
constexpr int kMaxRows = 6;       // rows per register tile
constexpr int64_t kPrefetch = 2;  // panels ahead

typedef float v8 __attribute__((vector_size(32)));

#if defined(__x86_64__)
#define PANEL_TARGET __attribute__((target("avx2,fma")))
#else
#define PANEL_TARGET
#endif

template <int R>
PANEL_TARGET __attribute__((always_inline)) inline void Tile(const float* x, int64_t K, const float* panel,
                                                             const float* next, float* y, int64_t N) {
  v8 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = v8{};
  for (int64_t k = 0; k < K; ++k) {
    if (next != nullptr) __builtin_prefetch(next + k * kWidth);
    v8 w0, w1;
    std::memcpy(&w0, panel + k * kWidth, sizeof(v8));
    std::memcpy(&w1, panel + k * kWidth + 8, sizeof(v8));
    for (int r = 0; r < R; ++r) {
      const float s = x[r * K + k];
      const v8 b = {s, s, s, s, s, s, s, s};
      acc[r][0] += b * w0;
      acc[r][1] += b * w1;
    }
  }
  for (int r = 0; r < R; ++r) {
    std::memcpy(y + r * N, &acc[r][0], sizeof(v8));
    std::memcpy(y + r * N + 8, &acc[r][1], sizeof(v8));
  }
}

struct Problem {
  const float* x;
  const float* w;
  float* y;
  int64_t M, K, P;
};

PANEL_TARGET void Panels(const Problem& p, int64_t first, int64_t last) {
  const int64_t N = p.P * kWidth;
  for (int64_t j = first; j < last; ++j) {
    const float* panel = p.w + j * p.K * kWidth;
    const float* next = j + kPrefetch < p.P ? panel + kPrefetch * p.K * kWidth : nullptr;
    float* out = p.y + j * kWidth;
    int64_t m = 0;
    for (; m + kMaxRows <= p.M; m += kMaxRows) {
      Tile<kMaxRows>(p.x + m * p.K, p.K, panel, m == 0 ? next : nullptr, out + m * N, N);
    }
    const float* pre = m == 0 ? next : nullptr;
    switch (p.M - m) {
      case 5: Tile<5>(p.x + m * p.K, p.K, panel, pre, out + m * N, N); break;
      case 4: Tile<4>(p.x + m * p.K, p.K, panel, pre, out + m * N, N); break;
      case 3: Tile<3>(p.x + m * p.K, p.K, panel, pre, out + m * N, N); break;
      case 2: Tile<2>(p.x + m * p.K, p.K, panel, pre, out + m * N, N); break;
      case 1: Tile<1>(p.x + m * p.K, p.K, panel, pre, out + m * N, N); break;
      default: break;
    }
  }
}

// Plain loops for x86 CPUs without AVX2/FMA.
void RowGeneric(const float* x, int64_t K, const float* panel, float* y) {
  float acc[kWidth] = {};
  for (int64_t k = 0; k < K; ++k)
    for (int64_t c = 0; c < kWidth; ++c) acc[c] += x[k] * panel[k * kWidth + c];
  std::memcpy(y, acc, sizeof(acc));
}

void PanelsGeneric(const Problem& p, int64_t first, int64_t last) {
  const int64_t N = p.P * kWidth;
  for (int64_t j = first; j < last; ++j)
    for (int64_t m = 0; m < p.M; ++m)
      RowGeneric(p.x + m * p.K, p.K, p.w + j * p.K * kWidth, p.y + m * N + j * kWidth);
}

void RunChunk(const Problem& p, int64_t first, int64_t last) {
#if defined(__x86_64__)
  static const bool fast = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (fast) return Panels(p, first, last);
  PanelsGeneric(p, first, last);
#else
  Panels(p, first, last);  // the vector extensions compile to the host's SIMD (e.g. NEON)
#endif
}

// Shared by the caller and the pool tasks; a task that starts after every chunk was claimed
// touches only this (kept alive by its shared_ptr), never the call's buffers.
struct Work {
  Problem problem;
  int64_t chunks, per_chunk;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};

  // Claims and runs chunks until none is left.
  void Drain() {
    for (int64_t c; (c = next.fetch_add(1, std::memory_order_relaxed)) < chunks;) {
      const int64_t first = c * per_chunk;
      RunChunk(problem, first, std::min(problem.P, first + per_chunk));
      finished.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error PanelMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 2> x, ffi::Buffer<ffi::F32, 3> w,
                       ffi::ResultBuffer<ffi::F32, 2> y) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (wd[2] != kWidth) return ffi::Error::InvalidArgument("panels must be 16 columns wide");
  if (xd[1] != wd[1]) return ffi::Error::InvalidArgument("x columns != panel rows");
  const auto yd = y->dimensions();
  if (yd[0] != xd[0] || yd[1] != wd[0] * kWidth) return ffi::Error::InvalidArgument("bad output shape");
  if (xd[0] == 0 || wd[0] == 0) return ffi::Error::Success();  // nothing to compute
  auto work = std::make_shared<Work>();
  work->problem = Problem{x.typed_data(), w.typed_data(), y->typed_data(), xd[0], xd[1], wd[0]};
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // Two chunks per thread even out a thread that starts late.
  work->chunks = std::min<int64_t>(work->problem.P, 2 * threads);
  work->per_chunk = (work->problem.P + work->chunks - 1) / std::max<int64_t>(1, work->chunks);
  work->chunks = (work->problem.P + work->per_chunk - 1) / work->per_chunk;
  for (int64_t t = 1; t < std::min(threads, work->chunks); ++t) {
    pool.Schedule([work] { work->Drain(); });
  }
  work->Drain();
  while (work->finished.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

using Rows = ffi::Buffer<ffi::F32, 2>;
using PanelStack = ffi::Buffer<ffi::F32, 3>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmPanelMatmul, PanelMatmul,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Rows>().Arg<PanelStack>().Ret<Rows>());
