// C (M, N) f32 = op(A) (M, K) @ op(B) (K, N), A and B bf16, f32 accumulation: the training
// matmuls of llm.cpu.gemm on CPUs with bf16 matrix engines (why and when it runs is explained
// there). op() is the identity or the transpose, so the three products of a linear layer
// (x @ W, dy @ W^T, x^T @ dy) read their operands where they lie.
//
// Phase 1 packs both operands, zero-padded: A as row-major (Mp, Kp) with Mp a multiple of 32
// and Kp of 32 rows, so a 16 x 32 bf16 AMX tile is one strided load; B in "VNNI" column panels
// (for each 16 columns, Kp/2 rows of 16 pairs (B[2p][c], B[2p+1][c])), the layout both AMX's
// B tiles and AVX-512 BF16's vdpbf16ps read. Phase 2 multiplies 32 x 32 blocks of C: four
// accumulator tiles, two A tiles, two B tiles (the eight AMX tiles), or, without AMX, 8-row x
// 32-column register blocks of vdpbf16ps.
//
// Both phases are split into chunks that the calling thread and XLA's intra-op pool claim from
// atomic counters; the caller works until no chunk is left and waits only for chunks another
// thread has already started, so a call never waits on a pool task that has not begun.

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "amx.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kTile = 16;   // rows (and f32 columns) of an AMX tile
constexpr int64_t kDepth = 32;  // bf16 along K in one tile row
constexpr int64_t kBlock = 32;  // C block edge: 2 x 2 tiles
constexpr int64_t kRowsPerChunk = 256;
constexpr int64_t kSlice = 512;  // K per pass over a strip (B slice: 32 KiB of L1)

enum Engine : int32_t { kAvx512Bf16 = 0, kAmx = 1 };

#define AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512vl,avx512bf16")))

struct Problem {
  const uint16_t* a;
  const uint16_t* b;
  float* c;
  int64_t M, N, K;
  bool trans_a, trans_b;
  int64_t Mp, Np, Kp;  // padded
  uint16_t* pa;        // (Mp, Kp)
  uint16_t* pb;        // (Np / 16) panels of (Kp / 2, 32)
};

// A(i, k) of op(A) and B(k, j) of op(B).
inline uint16_t AAt(const Problem& p, int64_t i, int64_t k) {
  return p.trans_a ? p.a[k * p.M + i] : p.a[i * p.K + k];
}
inline uint16_t BAt(const Problem& p, int64_t k, int64_t j) {
  return p.trans_b ? p.b[j * p.K + k] : p.b[k * p.N + j];
}

// Rows [first, last) of packed A.
void PackA(const Problem& p, int64_t first, int64_t last) {
  for (int64_t i = first; i < last; ++i) {
    uint16_t* row = p.pa + i * p.Kp;
    if (i >= p.M) {
      std::memset(row, 0, p.Kp * sizeof(uint16_t));
    } else if (!p.trans_a) {
      std::memcpy(row, p.a + i * p.K, p.K * sizeof(uint16_t));
      std::memset(row + p.K, 0, (p.Kp - p.K) * sizeof(uint16_t));
    } else {
      for (int64_t k = 0; k < p.K; ++k) row[k] = p.a[k * p.M + i];
      std::memset(row + p.K, 0, (p.Kp - p.K) * sizeof(uint16_t));
    }
  }
}

// The transposed A in 16 x 16 blocks: each block reads 16 source rows of 16 contiguous values
// and writes 16 packed rows, both within a few cache lines.
void PackATransposed(const Problem& p, int64_t first, int64_t last) {
  for (int64_t i0 = first; i0 < last; i0 += kTile) {
    const int64_t rows = std::clamp<int64_t>(std::min(last, p.M) - i0, 0, kTile);
    for (int64_t r = rows; r < std::min(kTile, last - i0); ++r) std::memset(p.pa + (i0 + r) * p.Kp, 0, p.Kp * 2);
    if (rows == 0) continue;
    for (int64_t k0 = 0; k0 < p.K; k0 += kTile) {
      const int64_t depth = std::min(kTile, p.K - k0);
      uint16_t block[kTile][kTile];
      for (int64_t k = 0; k < depth; ++k) std::memcpy(block[k], p.a + (k0 + k) * p.M + i0, rows * 2);
      for (int64_t r = 0; r < rows; ++r) {
        uint16_t* dst = p.pa + (i0 + r) * p.Kp + k0;
        for (int64_t k = 0; k < depth; ++k) dst[k] = block[k][r];
      }
    }
    for (int64_t r = 0; r < rows; ++r) std::memset(p.pa + (i0 + r) * p.Kp + p.K, 0, (p.Kp - p.K) * 2);
  }
}

// Panels [first, last) of packed B (16 columns each).
AVX512_TARGET void PackB(const Problem& p, int64_t first, int64_t last) {
  const int64_t pairs = p.Kp / 2;
  for (int64_t t = first; t < last; ++t) {
    uint32_t* panel = reinterpret_cast<uint32_t*>(p.pb) + t * pairs * kTile;
    const int64_t j0 = t * kTile;
    const int64_t cols = std::max<int64_t>(0, std::min(kTile, p.N - j0));
    if (!p.trans_b && cols == kTile) {
      for (int64_t q = 0; q < pairs; ++q) {
        const int64_t k = 2 * q;
        __m512i lo = k < p.K ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.b + k * p.N + j0)))
                             : _mm512_setzero_si512();
        __m512i hi = k + 1 < p.K
                         ? _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p.b + (k + 1) * p.N + j0)))
                         : _mm512_setzero_si512();
        _mm512_storeu_si512(panel + q * kTile, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
      }
    } else if (p.trans_b && cols > 0) {
      // Row j of the stored (N, K) matrix holds column j's pairs contiguously.
      for (int64_t q = 0; q < pairs; ++q) {
        const int64_t k = 2 * q;
        for (int64_t c = 0; c < kTile; ++c) {
          uint32_t v = 0;
          if (c < cols) {
            const uint16_t* row = p.b + (j0 + c) * p.K;
            const uint32_t lo = k < p.K ? row[k] : 0;
            const uint32_t hi = k + 1 < p.K ? row[k + 1] : 0;
            v = lo | (hi << 16);
          }
          panel[q * kTile + c] = v;
        }
      }
    } else {
      for (int64_t q = 0; q < pairs; ++q) {
        const int64_t k = 2 * q;
        for (int64_t c = 0; c < kTile; ++c) {
          uint32_t v = 0;
          if (c < cols) {
            const uint32_t lo = k < p.K ? BAt(p, k, j0 + c) : 0;
            const uint32_t hi = k + 1 < p.K ? BAt(p, k + 1, j0 + c) : 0;
            v = lo | (hi << 16);
          }
          panel[q * kTile + c] = v;
        }
      }
    }
  }
}

// Copies a (16, 16) f32 tile held in `tile` into C at (i0, j0), clipped to C's edges.
inline void StoreClipped(const Problem& p, const float* tile, int64_t i0, int64_t j0) {
  const int64_t rows = std::min(kTile, p.M - i0), cols = std::min(kTile, p.N - j0);
  for (int64_t r = 0; r < rows; ++r) std::memcpy(p.c + (i0 + r) * p.N + j0, tile + r * kTile, cols * sizeof(float));
}

// C rows [first, last) x columns [j0, j0 + 32) on AMX tiles, in 32 x 32 blocks. K is walked in
// slices of kSlice so the strip's two B panels for a slice (kSlice * 64 bytes) stay in L1 while
// every block of the row group reads them; partial sums wait in C (or, at C's ragged edges, in
// a block-sized scratch per block) between slices.
AMX_TARGET void StripAmx(const Problem& p, int64_t first, int64_t last, int64_t j0) {
  const int64_t pairs = p.Kp / 2;
  const int64_t t0 = j0 / kTile;
  const uint32_t* b0 = reinterpret_cast<const uint32_t*>(p.pb) + t0 * pairs * kTile;
  const uint32_t* b1 = b0 + pairs * kTile;  // Np is a multiple of 32: the second panel exists
  const bool full_cols = j0 + kBlock <= p.N;
  constexpr int64_t kMaxBlocks = kRowsPerChunk / kBlock;
  alignas(64) float edge[kMaxBlocks][4][kTile * kTile];  // partial sums of blocks at C's edges
  for (int64_t k0 = 0; k0 < p.Kp; k0 += kSlice) {
    const int64_t k1 = std::min(p.Kp, k0 + kSlice);
    const bool first_slice = k0 == 0, last_slice = k1 == p.Kp;
    for (int64_t i0 = first, blk = 0; i0 < last; i0 += kBlock, ++blk) {
      const bool full = full_cols && i0 + kBlock <= p.M;
      float* c00 = full ? p.c + i0 * p.N + j0 : edge[blk][0];
      float* c01 = full ? c00 + kTile : edge[blk][1];
      float* c10 = full ? c00 + kTile * p.N : edge[blk][2];
      float* c11 = full ? c10 + kTile : edge[blk][3];
      const int64_t stride = full ? p.N * 4 : kTile * 4;
      if (first_slice) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
      } else {
        _tile_loadd(0, c00, stride);
        _tile_loadd(1, c01, stride);
        _tile_loadd(2, c10, stride);
        _tile_loadd(3, c11, stride);
      }
      const uint16_t* a0 = p.pa + i0 * p.Kp;
      const uint16_t* a1 = a0 + kTile * p.Kp;
      for (int64_t k = k0; k < k1; k += kDepth) {
        _tile_loadd(4, a0 + k, p.Kp * 2);
        _tile_loadd(5, a1 + k, p.Kp * 2);
        _tile_loadd(6, b0 + (k / 2) * kTile, kTile * 4);
        _tile_loadd(7, b1 + (k / 2) * kTile, kTile * 4);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
      _tile_stored(0, c00, stride);
      _tile_stored(1, c01, stride);
      _tile_stored(2, c10, stride);
      _tile_stored(3, c11, stride);
      if (!full && last_slice) {
        const int64_t rows[4] = {i0, i0, i0 + kTile, i0 + kTile};
        const int64_t cols[4] = {j0, j0 + kTile, j0, j0 + kTile};
        for (int t = 0; t < 4; ++t) {
          if (rows[t] < p.M && cols[t] < p.N) StoreClipped(p, edge[blk][t], rows[t], cols[t]);
        }
      }
    }
  }
}

AMX_TARGET void ConfigureAmx() {
  llm_cpu::TileConfig config;
  for (int t = 0; t < 8; ++t) config.Set(t, kTile, 64);
  // GCC 12 does not see that ldtilecfg reads `config` and drops the stores above without this.
  asm volatile("" : : "r"(&config) : "memory");
  _tile_loadconfig(&config);
}

AMX_TARGET void ReleaseAmx() { _tile_release(); }

// C block rows [i0, i0 + 32), columns [j0, j0 + 32) with vdpbf16ps, 8 rows at a time.
AVX512_TARGET void BlockAvx512(const Problem& p, int64_t i0, int64_t j0) {
  const int64_t pairs = p.Kp / 2;
  const int64_t t0 = j0 / kTile;
  const bool two = (t0 + 1) * kTile < p.Np;
  const uint32_t* b0 = reinterpret_cast<const uint32_t*>(p.pb) + t0 * pairs * kTile;
  const uint32_t* b1 = two ? b0 + pairs * kTile : b0;
  for (int64_t r0 = i0; r0 < i0 + kBlock && r0 < p.M; r0 += 8) {
    __m512 acc[8][2];
    for (int r = 0; r < 8; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    const uint32_t* arow = reinterpret_cast<const uint32_t*>(p.pa + r0 * p.Kp);
    const int64_t astride = p.Kp / 2;
    for (int64_t q = 0; q < pairs; ++q) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(b0 + q * kTile);
      const __m512bh w1 = (__m512bh)_mm512_loadu_si512(b1 + q * kTile);
      for (int r = 0; r < 8; ++r) {
        const __m512bh x = (__m512bh)_mm512_set1_epi32(static_cast<int>(arow[r * astride + q]));
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, w0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, w1);
      }
    }
    for (int r = 0; r < 8 && r0 + r < p.M; ++r) {
      float* out = p.c + (r0 + r) * p.N;
      const int64_t c0 = std::min(kTile, p.N - j0);
      if (c0 == kTile) {
        _mm512_storeu_ps(out + j0, acc[r][0]);
      } else if (c0 > 0) {
        _mm512_mask_storeu_ps(out + j0, static_cast<__mmask16>((1u << c0) - 1), acc[r][0]);
      }
      const int64_t c1 = std::min(kTile, p.N - j0 - kTile);
      if (c1 == kTile) {
        _mm512_storeu_ps(out + j0 + kTile, acc[r][1]);
      } else if (c1 > 0) {
        _mm512_mask_storeu_ps(out + j0 + kTile, static_cast<__mmask16>((1u << c1) - 1), acc[r][1]);
      }
    }
  }
}

// Shared by the caller and the pool tasks (kept alive by its shared_ptr).
struct Work {
  Problem problem;
  Engine engine;
  int64_t a_chunks, b_chunks, c_row_groups, c_chunks;
  std::atomic<int64_t> next_pack{0}, packed{0}, next_block{0}, done{0};

  int64_t PackChunks() const { return a_chunks + b_chunks; }

  void Pack(int64_t chunk) {
    const Problem& p = problem;
    if (chunk < a_chunks) {
      const int64_t first = chunk * kRowsPerChunk, last = std::min(p.Mp, first + kRowsPerChunk);
      p.trans_a ? PackATransposed(p, first, last) : PackA(p, first, last);
    } else {
      const int64_t panels = p.Np / kTile, per = (panels + b_chunks - 1) / b_chunks;
      const int64_t first = (chunk - a_chunks) * per;
      PackB(p, first, std::min(panels, first + per));
    }
  }

  // Chunk = one 32-column strip of C over one group of kRowsPerChunk rows.
  void Multiply(int64_t chunk) {
    const Problem& p = problem;
    const int64_t strip = chunk / c_row_groups, group = chunk % c_row_groups;
    const int64_t j0 = strip * kBlock;
    const int64_t first = group * kRowsPerChunk, last = std::min(p.Mp, first + kRowsPerChunk);
    if (engine == kAmx) return StripAmx(p, first, last, j0);
    for (int64_t i0 = first; i0 < last; i0 += kBlock) BlockAvx512(p, i0, j0);
  }

  void Drain() {
    for (int64_t c; (c = next_pack.fetch_add(1, std::memory_order_relaxed)) < PackChunks();) {
      Pack(c);
      packed.fetch_add(1, std::memory_order_release);
    }
    while (packed.load(std::memory_order_acquire) < PackChunks()) std::this_thread::yield();
    if (engine == kAmx) ConfigureAmx();
    for (int64_t c; (c = next_block.fetch_add(1, std::memory_order_relaxed)) < c_chunks;) {
      Multiply(c);
      done.fetch_add(1, std::memory_order_release);
    }
    if (engine == kAmx) ReleaseAmx();
  }
};

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

ffi::Error Gemm(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16, 2> a, ffi::Buffer<ffi::BF16, 2> b,
                ffi::ResultBuffer<ffi::F32, 2> c, int32_t trans_a, int32_t trans_b, int32_t engine) {
  const auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  const int64_t M = trans_a ? ad[1] : ad[0], K = trans_a ? ad[0] : ad[1];
  const int64_t KB = trans_b ? bd[1] : bd[0], N = trans_b ? bd[0] : bd[1];
  if (K != KB) return ffi::Error::InvalidArgument("gemm: inner dimensions differ");
  if (cd[0] != M || cd[1] != N) return ffi::Error::InvalidArgument("gemm: bad output shape");
  if (engine != kAmx && engine != kAvx512Bf16) return ffi::Error::InvalidArgument("gemm: unknown engine");
  if (engine == kAmx && !llm_cpu::RequestAmx()) return ffi::Error::Internal("gemm: Linux refused the AMX tile state");
  if (M == 0 || N == 0) return ffi::Error::Success();
  if (K == 0) {
    std::memset(c->typed_data(), 0, M * N * sizeof(float));
    return ffi::Error::Success();
  }
  auto work = std::make_shared<Work>();
  Problem& p = work->problem;
  p = Problem{a.typed_data(), b.typed_data(), c->typed_data(), M, N, K, trans_a != 0, trans_b != 0,
              RoundUp(M, kBlock), RoundUp(N, kBlock), RoundUp(K, kDepth), nullptr, nullptr};
  std::vector<uint16_t> pa(p.Mp * p.Kp), pb(p.Np * p.Kp);
  p.pa = pa.data();
  p.pb = pb.data();
  work->engine = static_cast<Engine>(engine);
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  work->a_chunks = (p.Mp + kRowsPerChunk - 1) / kRowsPerChunk;
  work->b_chunks = std::min<int64_t>(p.Np / kTile, 2 * threads);
  work->c_row_groups = work->a_chunks;
  work->c_chunks = (p.Np / kBlock) * work->c_row_groups;
  const int64_t helpers = std::min(threads, std::max(work->PackChunks(), work->c_chunks)) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  // Packed buffers live on this stack frame: wait for every started block before returning.
  while (work->done.load(std::memory_order_acquire) < work->c_chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

// out (K, M) = a (M, K)^T in bf16, written row-major: XLA's dot takes x^T @ dy on AMX only in
// the x @ W form with a materialised row-major x^T, and XLA folds its own transposes into the
// dot's dimensions (llm.cpu.matmul). 64 x 64 blocks keep both sides' lines in L1; bands of 64
// output rows are claimed by the caller and XLA's pool as in Gemm.
struct TransposeWork {
  static constexpr int64_t kEdge = 64;
  const uint16_t* src;
  uint16_t* dst;
  int64_t M, K, bands;
  std::atomic<int64_t> next{0}, done{0};

  void Band(int64_t band) {
    const int64_t k0 = band * kEdge, k1 = std::min(K, k0 + kEdge);
    for (int64_t i0 = 0; i0 < M; i0 += kEdge) {
      const int64_t i1 = std::min(M, i0 + kEdge);
      for (int64_t k = k0; k < k1; ++k)
        for (int64_t i = i0; i < i1; ++i) dst[k * M + i] = src[i * K + k];
    }
  }
  void Drain() {
    for (int64_t b; (b = next.fetch_add(1, std::memory_order_relaxed)) < bands;) {
      Band(b);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error Transpose(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16, 2> a, ffi::ResultBuffer<ffi::BF16, 2> out) {
  const auto d = a.dimensions(), od = out->dimensions();
  const int64_t M = d[0], K = d[1];
  if (od[0] != K || od[1] != M) return ffi::Error::InvalidArgument("transpose: bad output shape");
  if (M == 0 || K == 0) return ffi::Error::Success();
  auto work = std::make_shared<TransposeWork>();
  work->src = reinterpret_cast<const uint16_t*>(a.typed_data());
  work->dst = reinterpret_cast<uint16_t*>(out->typed_data());
  work->M = M;
  work->K = K;
  work->bands = (K + TransposeWork::kEdge - 1) / TransposeWork::kEdge;
  const int64_t helpers = std::min<int64_t>(std::max<int64_t>(1, pool.num_threads()), work->bands) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  while (work->done.load(std::memory_order_acquire) < work->bands) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

using Bf16Matrix = ffi::Buffer<ffi::BF16, 2>;
using F32Matrix = ffi::Buffer<ffi::F32, 2>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmBf16Gemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Bf16Matrix>()
                                  .Arg<Bf16Matrix>()
                                  .Ret<F32Matrix>()
                                  .Attr<int32_t>("trans_a")
                                  .Attr<int32_t>("trans_b")
                                  .Attr<int32_t>("engine"));

// Whether this process may use AMX tiles (asks Linux once); called from Python at load time.
extern "C" int LlmRequestAmx() { return llm_cpu::RequestAmx() ? 1 : 0; }

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmBf16Transpose, Transpose,
                              ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<Bf16Matrix>().Ret<Bf16Matrix>());
