// The fixed-order product for a weight kept as bitsandbytes' 4-bit codes (fixedmm.py says why):
// the order of fixedmm.cpp, on weights dequantized in registers instead of read from a float32
// copy eight times the codes' bytes.
//
// The weight: w[n, k] = code[q] * absmax[b] for element i = n * K + k, its 4-bit index q the high
// nibble of byte i / 2 for an even i and the low one for an odd i, its block b = i / blocksize.
// One float32 multiply, the product bitsandbytes' CPU dequantize_4bit computes, so the weights,
// and with them every output, are those of fixed_linear on the dequantized matrix, bit for bit
// (fixedmm.py checks each layer against bitsandbytes before using it; the tests compare paths).
//
// Three paths, the same weights and the same sums: portable (one weight at a time), AVX2 (eight
// weights from two 8-entry permutes and a blend), AVX-512 (sixteen from one permute; the sums stay
// eight-lane chains, fed the first eight weights, then the next eight). The vector paths look the
// weights up in a block's 16 products code value times scale, each computed once a block. The vector paths need
// rows made of whole blocks (K a multiple of the block size) and blocks of whole vectors.

#include "fixedmm.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstring>
#include <vector>

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")))

// GCC 12's AVX-512 headers warn about their own undefined-vector idiom
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace fixedmm {
namespace {

struct Codes {
  const uint8_t* q;       // two 4-bit indices a byte, element i in byte i / 2 (the high nibble first)
  const float* absmax;    // one scale a block of `bs` elements
  const float* code;      // the 16 values an index stands for
  int64_t bs;
};

inline float weight_at(const Codes& c, int64_t i) {
  const uint8_t byte = c.q[i >> 1];
  return c.code[(i & 1) ? (byte & 15) : (byte >> 4)] * c.absmax[i / c.bs];
}

void outputs_portable(const float* X, int64_t M, int64_t K, const Codes& c, int64_t n0, int64_t n1, float* Y,
                      int64_t N) {
  const int64_t K8 = K / 8 * 8;
  std::vector<float> w(K);
  for (int64_t n = n0; n < n1; ++n) {
    for (int64_t k = 0; k < K; ++k) w[k] = weight_at(c, n * K + k);
    for (int64_t m = 0; m < M; ++m) {
      const float* x = X + m * K;
      float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t k = 0; k < K8; k += 8)
        for (int l = 0; l < 8; ++l) lane[l] = std::fma(x[k + l], w[k + l], lane[l]);
      Y[m * N + n] = tail(x, w.data(), K8, K, lanes_sum(lane));
    }
  }
}

// Eight weights from four bytes (each byte's two indices in order), looked up in the block's 16
// weights (code value times scale, computed once a block: the same product, so the same bits).
// An odd lane keeps its whole byte: the permutes read only its low 3 bits and the blend its bit 3.
AVX2 inline __m256 eight_weights(const uint8_t* q, __m256 table_lo, __m256 table_hi) {
  int32_t four;
  std::memcpy(&four, q, 4);
  const __m128i twice = _mm_shuffle_epi8(_mm_cvtsi32_si128(four),
                                         _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1, -1, -1, -1, -1, -1));
  const __m256i idx = _mm256_srlv_epi32(_mm256_cvtepu8_epi32(twice), _mm256_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0));
  const __m256 lo = _mm256_permutevar8x32_ps(table_lo, idx);
  const __m256 hi = _mm256_permutevar8x32_ps(table_hi, idx);
  return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}

// Sixteen weights from eight bytes: one 16-entry permute (it reads the low 4 bits of a lane).
AVX512 inline __m512 sixteen_weights(const uint8_t* q, __m512 table) {
  const __m128i twice = _mm_shuffle_epi8(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q)),
                                         _mm_setr_epi8(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7));
  const __m512i idx = _mm512_srlv_epi32(_mm512_cvtepu8_epi32(twice),
                                        _mm512_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0));
  return _mm512_permutexvar_ps(idx, table);
}

// R rows by C outputs: R * C independent chains (a lone row would otherwise wait on one chain's
// fused multiply-add latency), each weight vector dequantized once for the R rows.
template <int R, int C>
AVX2 void tile_avx2(const float* X, int64_t K, const Codes& c, int64_t n, float* Y, int64_t N) {
  const __m256 code_lo = _mm256_loadu_ps(c.code), code_hi = _mm256_loadu_ps(c.code + 8);
  const int64_t blocks = K / c.bs;
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) acc[r][j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m256 lo[C], hi[C];
    for (int j = 0; j < C; ++j) {
      const __m256 scale = _mm256_set1_ps(c.absmax[(n + j) * blocks + b]);
      lo[j] = _mm256_mul_ps(code_lo, scale);
      hi[j] = _mm256_mul_ps(code_hi, scale);
    }
    for (int64_t k = b * c.bs; k < (b + 1) * c.bs; k += 8) {
      __m256 w[C];
      for (int j = 0; j < C; ++j) w[j] = eight_weights(c.q + ((n + j) * K + k) / 2, lo[j], hi[j]);
      for (int r = 0; r < R; ++r) {
        const __m256 xv = _mm256_loadu_ps(X + r * K + k);
        for (int j = 0; j < C; ++j) acc[r][j] = _mm256_fmadd_ps(xv, w[j], acc[r][j]);
      }
    }
  }
  alignas(32) float lane[8];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) {
      _mm256_store_ps(lane, acc[r][j]);
      Y[r * N + n + j] = lanes_sum(lane);  // K is a multiple of 8: no tail
    }
}

template <int R, int C>
AVX512 void tile_avx512(const float* X, int64_t K, const Codes& c, int64_t n, float* Y, int64_t N) {
  const __m512 code = _mm512_loadu_ps(c.code);
  const int64_t blocks = K / c.bs;
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) acc[r][j] = _mm256_setzero_ps();
  for (int64_t b = 0; b < blocks; ++b) {
    __m512 table[C];
    for (int j = 0; j < C; ++j) table[j] = _mm512_mul_ps(code, _mm512_set1_ps(c.absmax[(n + j) * blocks + b]));
    for (int64_t k = b * c.bs; k < (b + 1) * c.bs; k += 16) {
      __m256 w0[C], w1[C];
      for (int j = 0; j < C; ++j) {
        const __m512 w = sixteen_weights(c.q + ((n + j) * K + k) / 2, table[j]);
        w0[j] = _mm512_castps512_ps256(w);
        w1[j] = _mm512_extractf32x8_ps(w, 1);
      }
      for (int r = 0; r < R; ++r) {
        const __m256 x0 = _mm256_loadu_ps(X + r * K + k), x1 = _mm256_loadu_ps(X + r * K + k + 8);
        for (int j = 0; j < C; ++j) acc[r][j] = _mm256_fmadd_ps(x1, w1[j], _mm256_fmadd_ps(x0, w0[j], acc[r][j]));
      }
    }
  }
  alignas(32) float lane[8];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < C; ++j) {
      _mm256_store_ps(lane, acc[r][j]);
      Y[r * N + n + j] = lanes_sum(lane);
    }
}

template <int R, int C>
struct Tile {
  static void run(int path, const float* X, int64_t K, const Codes& c, int64_t n0, int64_t n1, float* Y,
                  int64_t N) {
    int64_t n = n0;
    for (; n + C <= n1; n += C)
      path == 2 ? tile_avx512<R, C>(X, K, c, n, Y, N) : tile_avx2<R, C>(X, K, c, n, Y, N);
    for (; n < n1; ++n) path == 2 ? tile_avx512<R, 1>(X, K, c, n, Y, N) : tile_avx2<R, 1>(X, K, c, n, Y, N);
  }
};

// Rows in eights, then a four, one output at a time; fewer rows take two outputs at once. Measured
// on the AMD EPYC (2 cores) over a decode step of the default base's shapes, against 1, 4 and 8
// outputs for a lone row and 4x2 or 4x1 tiles for eight rows; the tile changes no bit.
void outputs_vector(int path, const float* X, int64_t M, int64_t K, const Codes& c, int64_t n0, int64_t n1,
                    float* Y, int64_t N) {
  int64_t m = 0;
  for (; m + 8 <= M; m += 8) Tile<8, 1>::run(path, X + m * K, K, c, n0, n1, Y + m * N, N);
  for (; m + 4 <= M; m += 4) Tile<4, 1>::run(path, X + m * K, K, c, n0, n1, Y + m * N, N);
  switch (M - m) {
    case 3: Tile<3, 2>::run(path, X + m * K, K, c, n0, n1, Y + m * N, N); break;
    case 2: Tile<2, 2>::run(path, X + m * K, K, c, n0, n1, Y + m * N, N); break;
    case 1: Tile<1, 2>::run(path, X + m * K, K, c, n0, n1, Y + m * N, N); break;
    default: break;
  }
}

Codes codes_of(const torch::Tensor& q, const torch::Tensor& absmax, const torch::Tensor& code, int64_t N, int64_t K,
               int64_t bs) {
  TORCH_CHECK(q.device().is_cpu() && absmax.device().is_cpu() && code.device().is_cpu(), "4-bit: CPU tensors only");
  TORCH_CHECK(N >= 0 && K >= 0 && q.scalar_type() == torch::kUInt8 && q.is_contiguous() && q.numel() * 2 >= N * K,
              "4-bit: the codes must be contiguous uint8 holding ", N * K, " indices");
  TORCH_CHECK(bs > 0 && absmax.scalar_type() == torch::kFloat32 && absmax.is_contiguous() &&
                  absmax.numel() * bs >= N * K,
              "4-bit: absmax must be contiguous float32, one a block of ", bs);
  TORCH_CHECK(code.scalar_type() == torch::kFloat32 && code.is_contiguous() && code.numel() == 16,
              "4-bit: the code must be 16 float32 values");
  return Codes{q.data_ptr<uint8_t>(), absmax.data_ptr<float>(), code.data_ptr<float>(), bs};
}

// 2 AVX-512, 1 AVX2, 0 portable: at most `limit` (the tests and TAILGATE_FIXEDMM_PORTABLE lower
// it), and a vector path only where whole blocks tile a row and whole vectors a block.
int path_of(int64_t K, int64_t bs, int64_t limit) {
  if (bs <= 0 || K % bs != 0) return 0;
  if (limit >= 2 && avx512() && bs % 16 == 0) return 2;
  if (limit >= 1 && avx2_fma() && bs % 8 == 0) return 1;
  return 0;
}

}  // namespace

torch::Tensor fixed_linear_4bit(torch::Tensor x, torch::Tensor q, torch::Tensor absmax, torch::Tensor code, int64_t N,
                                int64_t bs, int64_t limit) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == torch::kFloat32 && x.dim() == 2,
              "fixed_linear_4bit: x must be a float32 CPU matrix, got ", x.scalar_type(), " ", x.sizes());
  x = x.contiguous();
  const int64_t M = x.size(0), K = x.size(1);
  const Codes c = codes_of(q, absmax, code, N, K, bs);
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* X = x.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  const int path = path_of(K, bs, limit);
  at::parallel_for(0, N, grain(K, M), [&](int64_t n0, int64_t n1) {
    if (path > 0) outputs_vector(path, X, M, K, c, n0, n1, Y, N);
    else outputs_portable(X, M, K, c, n0, n1, Y, N);
  });
  return y;
}

namespace {

AVX2 void dequantize_avx2(const Codes& c, int64_t K, int64_t n0, int64_t n1, float* W) {
  const __m256 code_lo = _mm256_loadu_ps(c.code), code_hi = _mm256_loadu_ps(c.code + 8);
  for (int64_t i = n0 * K; i < n1 * K; i += 8) {
    const __m256 scale = _mm256_set1_ps(c.absmax[i / c.bs]);
    _mm256_storeu_ps(W + i, eight_weights(c.q + i / 2, _mm256_mul_ps(code_lo, scale), _mm256_mul_ps(code_hi, scale)));
  }
}

AVX512 void dequantize_avx512(const Codes& c, int64_t K, int64_t n0, int64_t n1, float* W) {
  const __m512 code = _mm512_loadu_ps(c.code);
  for (int64_t i = n0 * K; i < n1 * K; i += 16)
    _mm512_storeu_ps(W + i, sixteen_weights(c.q + i / 2, _mm512_mul_ps(code, _mm512_set1_ps(c.absmax[i / c.bs]))));
}

}  // namespace

// The (N, K) float32 weights a path multiplies by, from its own dequantization (the engine and
// the tests compare them with bitsandbytes' dequantize_4bit).
torch::Tensor dequantize_4bit(torch::Tensor q, torch::Tensor absmax, torch::Tensor code, int64_t N, int64_t K,
                              int64_t bs, int64_t limit) {
  const Codes c = codes_of(q, absmax, code, N, K, bs);
  auto w = torch::empty({N, K}, torch::dtype(torch::kFloat32));
  float* W = w.data_ptr<float>();
  const int path = path_of(K, bs, limit);
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    if (path == 2) dequantize_avx512(c, K, n0, n1, W);
    else if (path == 1) dequantize_avx2(c, K, n0, n1, W);
    else
      for (int64_t i = n0 * K; i < n1 * K; ++i) W[i] = weight_at(c, i);
  });
  return w;
}

std::string path_4bit(int64_t K, int64_t bs, int64_t limit) {
  const int p = path_of(K, bs, limit);
  return p == 2 ? "avx512" : p == 1 ? "avx2" : "portable";
}

}  // namespace fixedmm
