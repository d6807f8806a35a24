// What the dense (fixedmm.cpp) and the 4-bit (fixedmm4.cpp) products share: the end of the
// order every output is summed in, and the CPU checks.
#pragma once

#include <torch/extension.h>

#include <cmath>
#include <string>

namespace fixedmm {

// the eight lanes' partial sums, added in the fixed tree
inline float lanes_sum(const float* l) {
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

// the inputs past the last multiple of 8, one fused multiply-add each
inline float tail(const float* x, const float* w, int64_t k0, int64_t K, float s) {
  for (int64_t k = k0; k < K; ++k) s = std::fma(x[k], w[k], s);
  return s;
}

inline bool avx2_fma() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}

inline bool avx512() {
  static const bool yes = avx2_fma() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  return yes;
}

// the about 64 K-long dot products a thread's task should hold to be worth the thread
inline int64_t grain(int64_t K, int64_t M) {
  return std::max<int64_t>(12, (int64_t{1} << 16) / std::max<int64_t>(1, K * M));
}

torch::Tensor fixed_linear_4bit(torch::Tensor x, torch::Tensor q, torch::Tensor absmax, torch::Tensor code, int64_t N,
                                int64_t bs, int64_t limit);
torch::Tensor dequantize_4bit(torch::Tensor q, torch::Tensor absmax, torch::Tensor code, int64_t N, int64_t K,
                              int64_t bs, int64_t limit);
std::string path_4bit(int64_t K, int64_t bs, int64_t limit);

}  // namespace fixedmm
