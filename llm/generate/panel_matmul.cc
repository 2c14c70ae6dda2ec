// y (M, P*16) = x (M, K) @ W, with W pre-packed as P contiguous panels of 16 columns: the CPU
// decode matmul of llm.generate.panel_matmul (why it exists is explained there). Two handlers:
//   LlmPanelMatmul: f32 x, f32 panels (P, K, 16).
//   LlmPanelMatmulBf16: bf16 x (M, K), bf16 panels (P, K/2, 32) with K a multiple of 32, f32
//     result. Each panel row holds one k pair in the VNNI order [w[2p][c], w[2p+1][c]] for
//     c = 0..15, so 16 rows (32 k) of a panel are exactly an AMX B tile and each row is the
//     operand of one AVX-512 BF16 `vdpbf16ps`: both engines read the one layout.
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

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

#include "amx.h"
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

  void Begin() const {}
  void End() const {}
  void Run(int64_t first, int64_t last) const;
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

void Problem::Run(int64_t first, int64_t last) const {
#if defined(__x86_64__)
  static const bool fast = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (fast) return Panels(*this, first, last);
  PanelsGeneric(*this, first, last);
#else
  Panels(*this, first, last);  // the vector extensions compile to the host's SIMD (e.g. NEON)
#endif
}

// ---- bf16: AVX-512 BF16 and AMX over the VNNI-paired panels ----

constexpr int64_t kKStep = 32;   // k per AMX tile (16 pairs); the packed K is a multiple of it
constexpr int64_t kPairRow = 32;  // bf16 per panel row: 16 columns x one k pair
constexpr int kBfRows = 8;       // rows per AVX-512 BF16 register tile (x 2 panels: 16 accumulators)

enum Engine : int32_t { kAvx512Bf16 = 0, kAmx = 1 };

#if defined(__x86_64__)
#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

// Which engines this CPU and OS offer: bit kAvx512Bf16 and bit kAmx (cpuid and the XCR0 state
// the OS enables; AMX also needs the Linux permission, asked for by the caller).
int CpuEngines() {
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  const bool avx512 = (b >> 16) & 1 && (b >> 30) & 1;  // F, BW
  const bool amx = (d >> 22) & 1 && (d >> 24) & 1;      // AMX-BF16, AMX-TILE
  unsigned a1 = 0, b1, c1, d1;
  __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
  const bool bf16 = (a1 >> 5) & 1;
  unsigned xlo, xhi;
  __asm__("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
  const bool zmm_state = (xlo & 0xe6) == 0xe6;                 // SSE, AVX, opmask, ZMM
  const bool tile_state = (xlo & (3u << 17)) == (3u << 17);  // XTILECFG, XTILEDATA
  int engines = 0;
  if (avx512 && bf16 && zmm_state) engines |= 1 << kAvx512Bf16;
  if (amx && avx512 && bf16 && zmm_state && tile_state) engines |= 1 << kAmx;
  return engines;
}

// R rows x Q panels (Q = 1 or 2) of y: one f32 accumulator vector per row and panel, a
// `vdpbf16ps` per k pair with the row's two bf16 broadcast against the panel row.
template <int R, int Q>
BF16_TARGET __attribute__((always_inline)) inline void DpTile(const uint16_t* x, int64_t K, const uint16_t* w,
                                                             int64_t stride, const uint16_t* next, float* y,
                                                             int64_t N) {
  __m512 acc[R][Q];
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < Q; ++q) acc[r][q] = _mm512_setzero_ps();
  const int64_t pairs = K / 2;
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh b[Q];
    for (int q = 0; q < Q; ++q) {
      if (next != nullptr) _mm_prefetch(reinterpret_cast<const char*>(next + q * stride + p * kPairRow), _MM_HINT_T0);
      b[q] = (__m512bh)_mm512_loadu_si512(w + q * stride + p * kPairRow);
    }
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, x + r * K + 2 * p, sizeof(pair));
      const __m512bh a = (__m512bh)_mm512_set1_epi32(pair);
      for (int q = 0; q < Q; ++q) acc[r][q] = _mm512_dpbf16_ps(acc[r][q], a, b[q]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int q = 0; q < Q; ++q) _mm512_storeu_ps(y + r * N + q * kWidth, acc[r][q]);
}

template <int Q>
BF16_TARGET void DpRows(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t stride,
                        const uint16_t* next, float* y, int64_t N) {
  int64_t m = 0;
  for (; m + kBfRows <= M; m += kBfRows) DpTile<kBfRows, Q>(x + m * K, K, w, stride, m == 0 ? next : nullptr, y + m * N, N);
  const uint16_t* pre = m == 0 ? next : nullptr;
  x += m * K;
  y += m * N;
  switch (M - m) {
    case 7: DpTile<7, Q>(x, K, w, stride, pre, y, N); break;
    case 6: DpTile<6, Q>(x, K, w, stride, pre, y, N); break;
    case 5: DpTile<5, Q>(x, K, w, stride, pre, y, N); break;
    case 4: DpTile<4, Q>(x, K, w, stride, pre, y, N); break;
    case 3: DpTile<3, Q>(x, K, w, stride, pre, y, N); break;
    case 2: DpTile<2, Q>(x, K, w, stride, pre, y, N); break;
    case 1: DpTile<1, Q>(x, K, w, stride, pre, y, N); break;
    default: break;
  }
}

// AMX tiles: 0, 1 = C of two panels (16 rows), 2 = A (16 rows), 3, 4 = B of the two panels,
// 5, 6 = C and 7 = A for the last M % 16 rows.
AMX_TARGET void ConfigureAmx(int64_t tail_rows) {
  llm_cpu::TileConfig config;
  for (int t = 0; t < 5; ++t) config.Set(t, 16, 64);
  if (tail_rows > 0)
    for (int t = 5; t < 8; ++t) config.Set(t, static_cast<int>(tail_rows), 64);
  // GCC 12 does not see that ldtilecfg reads `config` and drops the stores above without this.
  asm volatile("" : : "r"(&config) : "memory");
  _tile_loadconfig(&config);
}

AMX_TARGET void ReleaseAmx() { _tile_release(); }

// Rows m.. of panels j (and j + 1 when Q = 2) with accumulator tiles C0, C1 and row tile A
// (GCC's tile intrinsics need literal tile numbers, hence a macro, not template arguments).
#define LLM_AMX_BLOCK(NAME, C0, C1, A)                                                                   \
  template <int Q>                                                                                      \
  AMX_TARGET __attribute__((always_inline)) inline void NAME(const uint16_t* x, int64_t K, const uint16_t* w, \
                                                            int64_t stride, const uint16_t* next, float* y, \
                                                            int64_t N) {                                 \
    _tile_zero(C0);                                                                                     \
    if (Q == 2) _tile_zero(C1);                                                                         \
    for (int64_t k = 0; k < K; k += kKStep) {                                                           \
      const uint16_t* b = w + (k / 2) * kPairRow; /* 16 pair rows = 1 KiB per panel */                 \
      if (next != nullptr) {                                                                            \
        for (int q = 0; q < Q; ++q)                                                                     \
          for (int line = 0; line < 16; ++line)                                                         \
            _mm_prefetch(reinterpret_cast<const char*>(next + q * stride + (k / 2 + line) * kPairRow),  \
                         _MM_HINT_T0);                                                                  \
      }                                                                                                 \
      _tile_loadd(A, x + k, K * 2);                                                                     \
      _tile_loadd(3, b, 64);                                                                            \
      _tile_dpbf16ps(C0, A, 3);                                                                         \
      if (Q == 2) {                                                                                     \
        _tile_loadd(4, b + stride, 64);                                                                 \
        _tile_dpbf16ps(C1, A, 4);                                                                       \
      }                                                                                                 \
    }                                                                                                   \
    _tile_stored(C0, y, N * 4);                                                                         \
    if (Q == 2) _tile_stored(C1, y + kWidth, N * 4);                                                    \
  }

LLM_AMX_BLOCK(AmxBlock, 0, 1, 2)      // 16 rows
LLM_AMX_BLOCK(AmxTailBlock, 5, 6, 7)  // the last M % 16 rows
#undef LLM_AMX_BLOCK

template <int Q>
AMX_TARGET void AmxRows(const uint16_t* x, int64_t M, int64_t K, const uint16_t* w, int64_t stride,
                        const uint16_t* next, float* y, int64_t N) {
  int64_t m = 0;
  for (; m + 16 <= M; m += 16) AmxBlock<Q>(x + m * K, K, w, stride, m == 0 ? next : nullptr, y + m * N, N);
  if (m < M) AmxTailBlock<Q>(x + m * K, K, w, stride, m == 0 ? next : nullptr, y + m * N, N);
}
#endif  // __x86_64__

struct Bf16Problem {
  const uint16_t* x;  // (M, K) bf16
  const uint16_t* w;  // (P, K / 2, 32) bf16
  float* y;           // (M, P * 16)
  int64_t M, K, P;
  Engine engine;

  // AMX: each thread loads the tile config for this call (another library may have left its
  // own on the thread) and releases the tiles after its last chunk.
  void Begin() const {
#if defined(__x86_64__)
    if (engine == kAmx) ConfigureAmx(M % 16);
#endif
  }
  void End() const {
#if defined(__x86_64__)
    if (engine == kAmx) ReleaseAmx();
#endif
  }

  // Panels first..last-1, two at a time (first is even), the pair two ahead prefetched.
  void Run(int64_t first, int64_t last) const {
#if defined(__x86_64__)
    const int64_t stride = K * kWidth;  // bf16 per panel: K / 2 pair rows of 32
    const int64_t N = P * kWidth;
    for (int64_t j = first; j < last; j += 2) {
      const uint16_t* panel = w + j * stride;
      const uint16_t* next = j + 4 <= P ? panel + 2 * stride : nullptr;
      float* out = y + j * kWidth;
      const bool two = j + 1 < last;
      if (engine == kAmx) {
        two ? AmxRows<2>(x, M, K, panel, stride, next, out, N) : AmxRows<1>(x, M, K, panel, stride, next, out, N);
      } else {
        two ? DpRows<2>(x, M, K, panel, stride, next, out, N) : DpRows<1>(x, M, K, panel, stride, next, out, N);
      }
    }
#endif
  }
};

// Shared by the caller and the pool tasks; a task that starts after every chunk was claimed
// touches only this (kept alive by its shared_ptr), never the call's buffers.
template <typename Job>
struct Work {
  Job job;
  int64_t units = 0, chunks = 0, per_chunk = 0;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};

  // Claims and runs chunks until none is left.
  void Drain() {
    int64_t c = next.fetch_add(1, std::memory_order_relaxed);
    if (c >= chunks) return;
    job.Begin();
    for (; c < chunks; c = next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t first = c * per_chunk;
      job.Run(first, std::min(units, first + per_chunk));
      finished.fetch_add(1, std::memory_order_release);
    }
    job.End();
  }
};

// Runs job over `units` panels split into chunks (multiples of `align` panels) that the calling
// thread and the pool claim; the caller works until no chunk is left and then waits only for
// chunks another thread has already started.
template <typename Job>
void RunOnPool(ffi::ThreadPool& pool, const Job& job, int64_t units, int64_t align) {
  auto work = std::make_shared<Work<Job>>();
  work->job = job;
  work->units = units;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // Two chunks per thread even out a thread that starts late.
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>((units + align - 1) / align, 2 * threads));
  work->per_chunk = ((units + chunks - 1) / chunks + align - 1) / align * align;
  work->chunks = (units + work->per_chunk - 1) / work->per_chunk;
  for (int64_t t = 1; t < std::min(threads, work->chunks); ++t) {
    pool.Schedule([work] { work->Drain(); });
  }
  work->Drain();
  while (work->finished.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
}

ffi::Error PanelMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 2> x, ffi::Buffer<ffi::F32, 3> w,
                       ffi::ResultBuffer<ffi::F32, 2> y) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (wd[2] != kWidth) return ffi::Error::InvalidArgument("panels must be 16 columns wide");
  if (xd[1] != wd[1]) return ffi::Error::InvalidArgument("x columns != panel rows");
  const auto yd = y->dimensions();
  if (yd[0] != xd[0] || yd[1] != wd[0] * kWidth) return ffi::Error::InvalidArgument("bad output shape");
  if (xd[0] == 0 || wd[0] == 0) return ffi::Error::Success();  // nothing to compute
  RunOnPool(pool, Problem{x.typed_data(), w.typed_data(), y->typed_data(), xd[0], xd[1], wd[0]}, wd[0], 1);
  return ffi::Error::Success();
}

ffi::Error PanelMatmulBf16(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16, 2> x, ffi::Buffer<ffi::BF16, 3> w,
                           ffi::ResultBuffer<ffi::F32, 2> y, int32_t engine) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (wd[2] != kPairRow) return ffi::Error::InvalidArgument("bf16 panels must hold 16 columns x 2 (k pairs)");
  if (xd[1] != 2 * wd[1]) return ffi::Error::InvalidArgument("x columns != 2 x panel pair rows");
  if (xd[1] % kKStep != 0) return ffi::Error::InvalidArgument("x columns must be a multiple of 32 (pad with zeros)");
  const auto yd = y->dimensions();
  if (yd[0] != xd[0] || yd[1] != wd[0] * kWidth) return ffi::Error::InvalidArgument("bad output shape");
  if (engine != kAmx && engine != kAvx512Bf16) return ffi::Error::InvalidArgument("unknown bf16 engine");
#if defined(__x86_64__)
  static const int engines = CpuEngines();
  if (!(engines & (1 << engine))) return ffi::Error::InvalidArgument("this CPU lacks the requested bf16 engine");
  if (engine == kAmx && !llm_cpu::RequestAmx()) return ffi::Error::Internal("Linux refused the AMX tile state");
#else
  return ffi::Error::InvalidArgument("the bf16 panel kernel needs x86-64 (AMX or AVX-512 BF16)");
#endif
  if (xd[0] == 0 || wd[0] == 0) return ffi::Error::Success();
  if (xd[1] == 0) {  // an empty sum
    std::memset(y->typed_data(), 0, sizeof(float) * yd[0] * yd[1]);
    return ffi::Error::Success();
  }
  const Bf16Problem job{x.typed_data(), w.typed_data(), y->typed_data(), xd[0], xd[1], wd[0], static_cast<Engine>(engine)};
  RunOnPool(pool, job, wd[0], 2);
  return ffi::Error::Success();
}

}  // namespace

using Rows = ffi::Buffer<ffi::F32, 2>;
using PanelStack = ffi::Buffer<ffi::F32, 3>;
using Bf16Rows = ffi::Buffer<ffi::BF16, 2>;
using Bf16PanelStack = ffi::Buffer<ffi::BF16, 3>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmPanelMatmul, PanelMatmul,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Rows>().Arg<PanelStack>().Ret<Rows>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmPanelMatmulBf16, PanelMatmulBf16,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Bf16Rows>()
                                  .Arg<Bf16PanelStack>()
                                  .Ret<Rows>()
                                  .Attr<int32_t>("engine"));

// The bf16 engines this process can use: bit 0 AVX-512 BF16, bit 1 AMX (asks Linux for the
// AMX tile state; a refusal clears the bit).
extern "C" int LlmPanelBf16Engines() {
#if defined(__x86_64__)
  int engines = CpuEngines();
  if ((engines & (1 << kAmx)) && !llm_cpu::RequestAmx()) engines &= ~(1 << kAmx);
  return engines;
#else
  return 0;
#endif
}
