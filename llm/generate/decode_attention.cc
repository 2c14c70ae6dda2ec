// One decode step's attention over the blocked KV cache in one call: the CPU path of
// llm.generate.decode_attention (why it exists is explained there).
//
// out (B, KV, G, hd) f32 = softmax(mask(softcap(scale * q . k))) . v for q (B, KV, G, hd) f32
// (G query heads per kv head, one position), a mask (B, S) and the cache blocks k_0..k_{n-1},
// v_0..v_{n-1}, each (B, KV, S_j, hd) in f32 or bf16 (S = sum S_j). Scores, softmax and the
// weighted sum are f32; a bf16 cache is widened as it is read, never copied. Every (batch, kv
// head) pair is one task: its keys are read once for all G query heads, then its values once.
// Tasks are split into chunks that the calling thread and XLA's pool claim from an atomic
// counter (as in panel_matmul.cc), so a call never waits on a pool task that has not begun.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kMaxBlocks = 32;
constexpr int kMaxGroup = 8;  // query heads per kv head

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));

#if defined(__x86_64__)
#define ATTN_TARGET __attribute__((target("avx2,fma")))
#else
#define ATTN_TARGET
#endif

struct Block {
  const void* k;
  const void* v;
  int64_t slots;
};

struct Problem {
  const float* q;
  const bool* mask;
  float* out;
  Block blocks[kMaxBlocks];
  int n_blocks;
  bool bf16;
  int64_t B, KV, G, hd, S;
  float scale, softcap;
};

// 8 cache values at `offset` of a block (f32, or bf16 widened by a 16-bit shift).
template <bool kBf16>
ATTN_TARGET __attribute__((always_inline)) inline v8 Load8(const void* base, int64_t offset) {
  if (kBf16) {
    u16x8 half;
    std::memcpy(&half, static_cast<const uint16_t*>(base) + offset, sizeof(half));
    const u32x8 wide = __builtin_convertvector(half, u32x8) << 16;
    v8 out;
    std::memcpy(&out, &wide, sizeof(out));
    return out;
  }
  v8 out;
  std::memcpy(&out, static_cast<const float*>(base) + offset, sizeof(out));
  return out;
}

ATTN_TARGET __attribute__((always_inline)) inline float Sum8(v8 x) {
  return ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]));
}

// exp(x) for x <= 0 (softmax after subtracting the max) in 8 lanes: 2^n * p(r) with a degree-6
// polynomial on r in [-ln2/2, ln2/2] (relative error ~2e-7); x below -87 gives 0.
ATTN_TARGET __attribute__((always_inline)) inline v8 Exp8(v8 x) {
  const v8 lo = v8{} - 87.0f;
  x = x < lo ? lo : x;
  const v8 magic = v8{} + 12582912.0f;  // 1.5 * 2^23: adding and subtracting rounds to an integer
  const v8 n = (x * 1.44269504088896341f + magic) - magic;
  const v8 r = x - n * 0.693359375f + n * 2.12194440e-4f;
  v8 y = v8{} + 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const i32x8 bits = (__builtin_convertvector(n, i32x8) + 127) << 23;
  v8 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const i32x8 under = x <= lo;
  v8 out = y * scale;
  i32x8 ob;
  std::memcpy(&ob, &out, sizeof(ob));
  ob &= ~under;
  std::memcpy(&out, &ob, sizeof(out));
  return out;
}

// Task t = (b, kv head) with G query heads: scores (G x S) in `scratch`, softmax, then the
// weighted sum of values. Keys and values are each read once for all G heads.
template <bool kBf16, int G>
ATTN_TARGET void Task(const Problem& p, int64_t t, float* scratch) {
  const int64_t b = t / p.KV, hd = p.hd, S = p.S;
  const float* q = p.q + t * G * hd;
  const bool* mask = p.mask + b * S;
  int64_t s0 = 0;
  for (int j = 0; j < p.n_blocks; ++j) {
    const Block& blk = p.blocks[j];
    const int64_t base = t * blk.slots * hd;  // (b, kv) slab of this block
    int64_t s = 0;
#if defined(__x86_64__)
    // 8 slots at a time: one accumulator per slot (8 independent FMA chains), then a tree of
    // horizontal adds gives the 8 scores in one vector.
    for (; s + 8 <= blk.slots; s += 8) {
      for (int g = 0; g < G; ++g) {
        v8 acc[8];
        for (int i = 0; i < 8; ++i) acc[i] = v8{};
        for (int64_t d = 0; d < hd; d += 8) {
          v8 qv;
          std::memcpy(&qv, q + g * hd + d, sizeof(qv));
          for (int i = 0; i < 8; ++i) acc[i] += qv * Load8<kBf16>(blk.k, base + (s + i) * hd + d);
        }
        const __m256 h01 = _mm256_hadd_ps((__m256)acc[0], (__m256)acc[1]);
        const __m256 h23 = _mm256_hadd_ps((__m256)acc[2], (__m256)acc[3]);
        const __m256 h45 = _mm256_hadd_ps((__m256)acc[4], (__m256)acc[5]);
        const __m256 h67 = _mm256_hadd_ps((__m256)acc[6], (__m256)acc[7]);
        const __m256 h0123 = _mm256_hadd_ps(h01, h23), h4567 = _mm256_hadd_ps(h45, h67);
        const __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20),
                                          _mm256_permute2f128_ps(h0123, h4567, 0x31));
        float x[8];
        _mm256_storeu_ps(x, sums);
        for (int i = 0; i < 8; ++i) {
          float y = x[i] * p.scale;
          if (p.softcap > 0) y = std::tanh(y / p.softcap) * p.softcap;
          scratch[g * S + s0 + s + i] = mask[s0 + s + i] ? y : -1e30f;
        }
      }
    }
#endif
    for (; s < blk.slots; ++s) {
      v8 acc[G][2];
      for (int g = 0; g < G; ++g) acc[g][0] = acc[g][1] = v8{};
      const int64_t row = base + s * hd;
      for (int64_t d = 0; d < hd; d += 8) {  // two chains per head hide the FMA latency
        const v8 k = Load8<kBf16>(blk.k, row + d);
        const int c = (d >> 3) & 1;
        for (int g = 0; g < G; ++g) {
          v8 qv;
          std::memcpy(&qv, q + g * hd + d, sizeof(qv));
          acc[g][c] += qv * k;
        }
      }
      const bool visible = mask[s0 + s];
      for (int g = 0; g < G; ++g) {
        float x = Sum8(acc[g][0] + acc[g][1]) * p.scale;
        if (p.softcap > 0) x = std::tanh(x / p.softcap) * p.softcap;
        scratch[g * S + s0 + s] = visible ? x : -1e30f;
      }
    }
    s0 += blk.slots;
  }
  // Softmax per head (masked slots hold -1e30: their weight is exactly 0, as in the XLA path; a
  // row with no visible slot at all averages them all, as the XLA path does).
  bool any_visible = false;
  for (int64_t s = 0; s < S && !any_visible; ++s) any_visible = mask[s];
  for (int g = 0; g < G; ++g) {
    float* row = scratch + g * S;
    float top = -INFINITY;
    for (int64_t s = 0; s < S; ++s) top = std::max(top, row[s]);
    v8 total8 = v8{};
    int64_t s = 0;
    for (; s + 8 <= S; s += 8) {
      v8 x;
      std::memcpy(&x, row + s, sizeof(x));
      x = Exp8(x - top);
      std::memcpy(row + s, &x, sizeof(x));
      total8 += x;
    }
    float total = Sum8(total8);
    for (; s < S; ++s) total += (row[s] = std::exp(row[s] - top));
    const float inv = 1.0f / total;
    for (s = 0; s < S; ++s) row[s] *= inv;
  }
  float* out = p.out + t * G * hd;
  for (int g = 0; g < G; ++g) {
    const float* w = scratch + g * S;
    for (int64_t dc = 0; dc < hd; dc += 64) {  // up to 64 columns in 8 register accumulators
      const int chunks = static_cast<int>(std::min<int64_t>(8, (hd - dc) / 8));
      v8 o[8];
      for (int i = 0; i < 8; ++i) o[i] = v8{};
      int64_t s0v = 0;
      for (int j = 0; j < p.n_blocks; ++j) {
        const Block& blk = p.blocks[j];
        const int64_t base = t * blk.slots * hd + dc;
        for (int64_t s = 0; s < blk.slots; ++s) {
          if (!mask[s0v + s] && any_visible) continue;  // weight exactly 0
          const float ws = w[s0v + s];
          const int64_t row = base + s * hd;
          if (chunks == 8) {
            for (int i = 0; i < 8; ++i) o[i] += ws * Load8<kBf16>(blk.v, row + 8 * i);
          } else {
            for (int i = 0; i < chunks; ++i) o[i] += ws * Load8<kBf16>(blk.v, row + 8 * i);
          }
        }
        s0v += blk.slots;
      }
      for (int i = 0; i < chunks; ++i) std::memcpy(out + g * hd + dc + 8 * i, &o[i], sizeof(v8));
    }
  }
}

template <bool kBf16>
void TaskOf(const Problem& p, int64_t t, float* scratch) {
  switch (p.G) {
    case 1: return Task<kBf16, 1>(p, t, scratch);
    case 2: return Task<kBf16, 2>(p, t, scratch);
    case 3: return Task<kBf16, 3>(p, t, scratch);
    case 4: return Task<kBf16, 4>(p, t, scratch);
    case 5: return Task<kBf16, 5>(p, t, scratch);
    case 6: return Task<kBf16, 6>(p, t, scratch);
    case 7: return Task<kBf16, 7>(p, t, scratch);
    case 8: return Task<kBf16, 8>(p, t, scratch);
    default: return;  // the caller allows G <= kMaxGroup = 8
  }
}

void RunTasks(const Problem& p, int64_t first, int64_t last, float* scratch) {
  for (int64_t t = first; t < last; ++t) p.bf16 ? TaskOf<true>(p, t, scratch) : TaskOf<false>(p, t, scratch);
}

struct Work {
  Problem problem;
  int64_t chunks, per_chunk, tasks;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> finished{0};

  void Drain() {
    int64_t c = next.fetch_add(1, std::memory_order_relaxed);
    if (c >= chunks) return;
    std::vector<float> scratch(problem.G * problem.S);
    for (; c < chunks; c = next.fetch_add(1, std::memory_order_relaxed)) {
      const int64_t first = c * per_chunk;
      RunTasks(problem, first, std::min(tasks, first + per_chunk), scratch.data());
      finished.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32, 4> q, ffi::Buffer<ffi::PRED, 2> mask,
                           ffi::RemainingArgs cache, ffi::ResultBuffer<ffi::F32, 4> out, float scale,
                           float softcap) {
#if !defined(__x86_64__)
  static const bool fast = true;
#else
  static const bool fast = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
  if (!fast) return ffi::Error::InvalidArgument("decode attention kernel needs AVX2 and FMA");
  const auto qd = q.dimensions();
  Problem p{};
  p.B = qd[0], p.KV = qd[1], p.G = qd[2], p.hd = qd[3];
  if (p.hd % 8 != 0) return ffi::Error::InvalidArgument("head_dim must be a multiple of 8");
  if (p.G > kMaxGroup) return ffi::Error::InvalidArgument("too many query heads per kv head");
  if (cache.size() % 2 != 0 || cache.size() == 0 || cache.size() / 2 > kMaxBlocks)
    return ffi::Error::InvalidArgument("give 1..32 key blocks then as many value blocks");
  p.n_blocks = static_cast<int>(cache.size() / 2);
  p.S = 0;
  for (int j = 0; j < p.n_blocks; ++j) {
    auto k = cache.get<ffi::AnyBuffer>(j);
    auto v = cache.get<ffi::AnyBuffer>(j + p.n_blocks);
    if (!k.has_value() || !v.has_value()) return ffi::Error::InvalidArgument("cache blocks must be arrays");
    const auto kd = k->dimensions(), vd = v->dimensions();
    const bool bf16 = k->element_type() == ffi::DataType::BF16;
    if (!bf16 && k->element_type() != ffi::DataType::F32) return ffi::Error::InvalidArgument("cache must be f32 or bf16");
    if (v->element_type() != k->element_type() || (j > 0 && bf16 != p.bf16))
      return ffi::Error::InvalidArgument("cache blocks must share one dtype");
    if (kd.size() != 4 || vd.size() != 4 || kd[0] != p.B || kd[1] != p.KV || kd[3] != p.hd || vd[0] != kd[0] ||
        vd[1] != kd[1] || vd[2] != kd[2] || vd[3] != kd[3])
      return ffi::Error::InvalidArgument("cache blocks must be (B, KV, slots, head_dim) like q");
    p.bf16 = bf16;
    p.blocks[j] = Block{k->untyped_data(), v->untyped_data(), kd[2]};
    p.S += kd[2];
  }
  const auto md = mask.dimensions();
  if (md[0] != p.B || md[1] != p.S) return ffi::Error::InvalidArgument("mask must be (B, cache slots)");
  const auto od = out->dimensions();
  if (od[0] != p.B || od[1] != p.KV || od[2] != p.G || od[3] != p.hd) return ffi::Error::InvalidArgument("bad output shape");
  p.q = q.typed_data();
  p.mask = mask.typed_data();
  p.out = out->typed_data();
  p.scale = scale;
  p.softcap = softcap;
  const int64_t tasks = p.B * p.KV;
  if (tasks == 0 || p.hd == 0 || p.G == 0) return ffi::Error::Success();
  if (p.S == 0) return ffi::Error::InvalidArgument("no cache slots to attend to");
  auto work = std::make_shared<Work>();
  work->problem = p;
  work->tasks = tasks;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunks = std::min<int64_t>(tasks, 4 * threads);
  work->per_chunk = (tasks + chunks - 1) / chunks;
  work->chunks = (tasks + work->per_chunk - 1) / work->per_chunk;
  for (int64_t t = 1; t < std::min(threads, work->chunks); ++t) pool.Schedule([work] { work->Drain(); });
  work->Drain();
  while (work->finished.load(std::memory_order_acquire) < work->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

using Queries = ffi::Buffer<ffi::F32, 4>;
using Mask = ffi::Buffer<ffi::PRED, 2>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(LlmDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<Queries>()
                                  .Arg<Mask>()
                                  .RemainingArgs()
                                  .Ret<Queries>()
                                  .Attr<float>("scale")
                                  .Attr<float>("softcap"));
