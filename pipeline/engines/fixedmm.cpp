// A float32 matmul y = x @ w.T whose every output is summed in one fixed order, whatever the
// number of rows, their place in the block, the thread count or the CPU (fixedmm.py says why).
//
// The order, for an output y[m, n] over K inputs (K8 = K rounded down to a multiple of 8):
//   lane[l] = 0 for l in 0..7; for k in 0, 8, .., K8 - 8: lane[l] = fma(x[m, k + l], w[n, k + l], lane[l])
//   s = ((lane0 + lane1) + (lane2 + lane3)) + ((lane4 + lane5) + (lane6 + lane7))
//   for k in K8 .. K - 1: s = fma(x[m, k], w[n, k], s)
// Every fma is IEEE fused (one rounding), so the AVX2 path below (eight lanes in one register)
// and the portable path (std::fma one lane at a time) give the same bits; the tests compare
// them. No step reads another row, and the threads split the outputs, never a sum.
//
// fixedmm4.cpp runs the same order on a weight kept as 4-bit codes.

#include "fixedmm.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

namespace fixedmm {
namespace {

// The portable path: the order above, one output at a time.
void outputs_portable(const float* X, int64_t M, int64_t K, const float* W, int64_t n0, int64_t n1, float* Y,
                      int64_t N) {
  const int64_t K8 = K / 8 * 8;
  for (int64_t n = n0; n < n1; ++n) {
    const float* w = W + n * K;
    for (int64_t m = 0; m < M; ++m) {
      const float* x = X + m * K;
      float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      for (int64_t k = 0; k < K8; k += 8)
        for (int l = 0; l < 8; ++l) lane[l] = std::fma(x[k + l], w[k + l], lane[l]);
      Y[m * N + n] = tail(x, w, K8, K, lanes_sum(lane));
    }
  }
}

// R rows by C outputs at once: R * C chains of fused multiply-adds, each weight load shared by
// the R rows and each input load by the C outputs. Every chain is one output's lanes in the
// order above. One output at a time (C = 1) measured fastest (AMD EPYC, 2 cores): streaming
// one weight row at a time suits the prefetcher better than the extra chains suit the FMA units.
template <int R, int C>
__attribute__((target("avx2,fma"))) inline void tile_avx2(const float* X, int64_t K, const float* W, float* Y,
                                                          int64_t N) {
  const int64_t K8 = K / 8 * 8;
  __m256 acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t k = 0; k < K8; k += 8) {
    __m256 wv[C];
    for (int c = 0; c < C; ++c) wv[c] = _mm256_loadu_ps(W + c * K + k);
    for (int r = 0; r < R; ++r) {
      const __m256 xv = _mm256_loadu_ps(X + r * K + k);
      for (int c = 0; c < C; ++c) acc[r][c] = _mm256_fmadd_ps(xv, wv[c], acc[r][c]);
    }
  }
  alignas(32) float lane[8];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) {
      _mm256_store_ps(lane, acc[r][c]);
      Y[r * N + c] = tail(X + r * K, W + c * K, K8, K, lanes_sum(lane));
    }
}

template <int R>
__attribute__((target("avx2,fma"))) void rows_avx2(const float* X, int64_t K, const float* W, int64_t n0,
                                                   int64_t n1, float* Y, int64_t N) {
  for (int64_t n = n0; n < n1; ++n) tile_avx2<R, 1>(X, K, W + n * K, Y + n, N);
}

__attribute__((target("avx2,fma"))) void outputs_avx2(const float* X, int64_t M, int64_t K, const float* W,
                                                      int64_t n0, int64_t n1, float* Y, int64_t N) {
  int64_t m = 0;
  for (; m + 4 <= M; m += 4) rows_avx2<4>(X + m * K, K, W, n0, n1, Y + m * N, N);
  switch (M - m) {
    case 3: rows_avx2<3>(X + m * K, K, W, n0, n1, Y + m * N, N); break;
    case 2: rows_avx2<2>(X + m * K, K, W, n0, n1, Y + m * N, N); break;
    case 1: rows_avx2<1>(X + m * K, K, W, n0, n1, Y + m * N, N); break;
    default: break;
  }
}

}  // namespace

// x (M, K) and w (N, K), float32 on the CPU; `portable` forces the path without AVX2.
torch::Tensor fixed_linear(torch::Tensor x, torch::Tensor w, bool portable) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(), "fixed_linear: CPU tensors only");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && w.scalar_type() == torch::kFloat32,
              "fixed_linear: float32 only, got ", x.scalar_type(), " and ", w.scalar_type());
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1), "fixed_linear: shapes ", x.sizes(), " and ",
              w.sizes(), " do not multiply as x @ w.T");
  x = x.contiguous();
  w = w.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return y;
  const float* X = x.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  const bool fast = !portable && avx2_fma();
  // about 64 K-long dot products per task: enough work to be worth a thread; outputs are split
  // between threads, sums never are, so the thread count does not change a bit
  at::parallel_for(0, N, grain(K, M), [&](int64_t n0, int64_t n1) {
    if (fast) outputs_avx2(X, M, K, W, n0, n1, Y, N);
    else outputs_portable(X, M, K, W, n0, n1, Y, N);
  });
  return y;
}

// A LoRA layer's decode product in one call, in peft's arithmetic: the base product, then
// (x @ A.T) @ B.T, each in the fixed order, times `scaling` (rounded to float32, as torch's
// float32 multiply by a Python number is) and added: out = base + (h * s), two roundings.
// The base weight is a float32 matrix `w`, or 4-bit codes (q, absmax, code) for N outputs.
torch::Tensor fixed_lora(torch::Tensor x, c10::optional<torch::Tensor> w, c10::optional<torch::Tensor> q,
                         c10::optional<torch::Tensor> absmax, c10::optional<torch::Tensor> code, int64_t N,
                         int64_t bs, torch::Tensor a, torch::Tensor b, double scaling, int64_t limit) {
  TORCH_CHECK(x.dim() == 2, "fixed_lora: x must be a matrix, got ", x.sizes());
  const bool portable = limit == 0;
  torch::Tensor out = w.has_value() ? fixed_linear(x, *w, portable)
                                    : fixed_linear_4bit(x, q.value(), absmax.value(), code.value(), N, bs, limit);
  torch::Tensor up = fixed_linear(fixed_linear(x, a, portable), b, portable);
  TORCH_CHECK(up.sizes() == out.sizes(), "fixed_lora: the update's shape ", up.sizes(), " is not the base's ",
              out.sizes());
  float* O = out.data_ptr<float>();
  const float* U = up.data_ptr<float>();
  const float s = static_cast<float>(scaling);
  const int64_t n = out.numel();
  for (int64_t i = 0; i < n; ++i) {
    const float scaled = U[i] * s;
    O[i] = O[i] + scaled;
  }
  return out;
}

bool has_avx2_fma() { return avx2_fma(); }

}  // namespace fixedmm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fixed_linear", &fixedmm::fixed_linear, "x @ w.T, every output summed in one fixed order", py::arg("x"),
        py::arg("w"), py::arg("portable") = false);
  m.def("fixed_linear_4bit", &fixedmm::fixed_linear_4bit, "x @ w.T for a 4-bit weight, dequantized in registers",
        py::arg("x"), py::arg("q"), py::arg("absmax"), py::arg("code"), py::arg("n"), py::arg("blocksize"),
        py::arg("limit") = 2);
  m.def("dequantize_4bit", &fixedmm::dequantize_4bit, "the float32 weight fixed_linear_4bit multiplies by", py::arg("q"),
        py::arg("absmax"), py::arg("code"), py::arg("n"), py::arg("k"), py::arg("blocksize"),
        py::arg("limit") = 2);
  m.def("path_4bit", &fixedmm::path_4bit, "which path a 4-bit product of this row length and block size takes",
        py::arg("k"), py::arg("blocksize"), py::arg("limit") = 2);
  m.def("fixed_lora", &fixedmm::fixed_lora, "a LoRA layer's product: base + (x @ A.T @ B.T) * scaling", py::arg("x"),
        py::arg("w"), py::arg("q"), py::arg("absmax"), py::arg("code"), py::arg("n"), py::arg("blocksize"),
        py::arg("a"), py::arg("b"), py::arg("scaling"), py::arg("limit") = 2);
  m.def("has_avx2_fma", &fixedmm::has_avx2_fma, "whether this CPU runs the AVX2 + FMA path");
}
