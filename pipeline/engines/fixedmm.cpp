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

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cmath>

namespace {

inline float lanes_sum(const float* l) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

inline float tail(const float* x, const float* w, int64_t k0, int64_t K, float s) {
  for (int64_t k = k0; k < K; ++k) s = std::fma(x[k], w[k], s);
  return s;
}

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

bool avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
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
  const int64_t grain = std::max<int64_t>(12, (int64_t{1} << 16) / std::max<int64_t>(1, K * M));
  at::parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    if (fast) outputs_avx2(X, M, K, W, n0, n1, Y, N);
    else outputs_portable(X, M, K, W, n0, n1, Y, N);
  });
  return y;
}

bool has_avx2_fma() { return avx2_fma(); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fixed_linear", &fixed_linear, "x @ w.T, every output summed in one fixed order", py::arg("x"),
        py::arg("w"), py::arg("portable") = false);
  m.def("has_avx2_fma", &has_avx2_fma, "whether this CPU runs the AVX2 + FMA path");
}
