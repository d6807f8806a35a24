"""A matmul that computes every row in one fixed order, beside the engine's MKL blocks.

    python -m benchmarks.fixed_matmul --out benchmarks/results/fixed_matmul.json [--steps 5]

The question it answers before any engine change: is the one-row decode gap to llama.cpp the
weights' bytes or the way the engine multiplies them? The engine keeps a row's evaluated bits by
multiplying decode rows through MKL in blocks of widths probed per shape (a lone row as a block
of 2 or 4, pipeline/engines/widths.py), because MKL picks its kernel by the number of rows. A
kernel whose order of operations does not depend on the number of rows needs no such blocks:
here each output is 8 lanes of fused multiply-adds over k (k % 8 is the lane), the lanes summed
pairwise in a fixed order, then the tail; rows share each weight row's load, four at a time. It
uses AVX2 and FMA only, which every x86-64 host of this project has, so its bits do not depend
on the host class either. It is compiled here with torch's C++ extension loader (a C++ compiler
and ninja), and is a measurement, not part of the engine: adopting it changes every evaluated
number once.

Per decode step over the default base's matmul shapes (30 layers of q, k, v, o, gate, up, down
and the 49,152-row output head; random float32 weights, since the time depends on the shapes
only) and for 1, 3, 8, 13 and 32 live rows: the median time of the engine's way (blocks of the
probed widths, each multiplied as the plan says) and of the fixed-order kernel on exactly the
live rows, the arms alternating. Checked: every row of the kernel's output equals that row
computed alone, bit for bit, and its largest difference from `F.linear`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

SOURCE = r"""
#include <torch/extension.h>
#include <immintrin.h>
#include <cmath>

static inline float lanes_sum(__m256 a) {
  alignas(32) float l[8];
  _mm256_store_ps(l, a);
  return ((l[0] + l[1]) + (l[2] + l[3])) + ((l[4] + l[5]) + (l[6] + l[7]));
}

// y[m, n] = sum_k x[m, k] * w[n, k]; the order of every row's sum is the same for any M.
torch::Tensor fixed_linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && w.dtype() == torch::kFloat32, "float32 only");
  x = x.contiguous(); w = w.contiguous();
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  const float* X = x.data_ptr<float>();
  const float* W = w.data_ptr<float>();
  float* Y = y.data_ptr<float>();
  const int64_t K8 = K / 8 * 8;
  #pragma omp parallel for schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const float* wn = W + n * K;
    int64_t m = 0;
    for (; m + 4 <= M; m += 4) {
      __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
      for (int64_t k = 0; k < K8; k += 8) {
        const __m256 wv = _mm256_loadu_ps(wn + k);
        for (int r = 0; r < 4; ++r) a[r] = _mm256_fmadd_ps(_mm256_loadu_ps(X + (m + r) * K + k), wv, a[r]);
      }
      for (int r = 0; r < 4; ++r) {
        float s = lanes_sum(a[r]);
        for (int64_t k = K8; k < K; ++k) s = std::fma(X[(m + r) * K + k], wn[k], s);
        Y[(m + r) * N + n] = s;
      }
    }
    for (; m < M; ++m) {
      __m256 a = _mm256_setzero_ps();
      for (int64_t k = 0; k < K8; k += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(X + m * K + k), _mm256_loadu_ps(wn + k), a);
      float s = lanes_sum(a);
      for (int64_t k = K8; k < K; ++k) s = std::fma(X[m * K + k], wn[k], s);
      Y[m * N + n] = s;
    }
  }
  return y;
}
"""

# The default base (SmolLM2-135M): hidden 576, 9 query and 3 key/value heads of 64, MLP 1536.
LAYERS, HIDDEN, KV, MLP, VOCAB = 30, 576, 192, 1536, 49152
SHAPES = ((HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, KV), (HIDDEN, HIDDEN),
          (HIDDEN, MLP), (HIDDEN, MLP), (MLP, HIDDEN))  # (in, out) of q, k, v, o, gate, up, down
LIVE = (1, 3, 8, 13, 32)
ROUNDS = 2


def compile_kernel():
    from torch.utils.cpp_extension import load_inline

    return load_inline("tailgate_fixed_matmul", cpp_sources=SOURCE, functions=["fixed_linear"],
                       extra_cflags=["-O3", "-mavx2", "-mfma", "-fopenmp"], extra_ldflags=["-fopenmp"])


def run(steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from pipeline.engines.blockmm import block_linear, orientation
    from pipeline.engines.rowwise import DECODE_WIDTH, blocks_of
    from pipeline.engines.widths import cover, widths

    kernel = compile_kernel().fixed_linear
    torch.manual_seed(0)
    weights = [torch.randn(o, i) * 0.05 for _ in range(LAYERS) for i, o in SHAPES] + [torch.randn(VOCAB, HIDDEN) * 0.05]
    plans = {}
    for w in weights:
        key = (w.shape[1], w.shape[0])
        if key not in plans:
            how = orientation(*key, torch.float32, False, DECODE_WIDTH, "cpu")
            plans[key] = (how, widths(*key, torch.float32, False, how, DECODE_WIDTH, "cpu"))

    def engine_step(xs):
        for w in weights:
            how, allowed = plans[(w.shape[1], w.shape[0])]
            x = xs[w.shape[1]]
            torch.cat([block_linear(b, w, None, how) for b in blocks_of(x, cover(x.shape[0], allowed))])

    def fixed_step(xs):
        for w in weights:
            kernel(xs[w.shape[1]], w)

    out = {}
    with torch.inference_mode():
        for n in LIVE:
            xs = {HIDDEN: torch.randn(n, HIDDEN), MLP: torch.randn(n, MLP)}
            times = {"engine": [], "fixed": []}
            for _ in range(ROUNDS):
                for name, step in (("engine", engine_step), ("fixed", fixed_step)):
                    step(xs)  # warm: caches, the probe's first call
                    for _ in range(steps):
                        t0 = time.perf_counter()
                        step(xs)
                        times[name].append(time.perf_counter() - t0)
            engine_ms, fixed_ms = (statistics.median(times[k]) * 1e3 for k in ("engine", "fixed"))
            out[str(n)] = {"engine_rows": sum(cover(n, plans[(HIDDEN, MLP)][1])), "engine_ms": round(engine_ms, 1),
                           "fixed_ms": round(fixed_ms, 1), "speedup": round(engine_ms / fixed_ms, 3)}
        # every row as it is alone, for every shape; and how far the kernel's sums are from MKL's
        invariant, max_diff = True, 0.0
        for i, o in set(SHAPES) | {(HIDDEN, VOCAB)}:
            w = next(x for x in weights if tuple(x.shape) == (o, i))
            x = torch.randn(13, i)
            together = kernel(x, w)
            invariant &= all(torch.equal(kernel(x[r:r + 1], w)[0], together[r]) for r in range(13))
            invariant &= torch.equal(kernel(x[:5], w), together[:5])
            max_diff = max(max_diff, float((together - F.linear(x, w)).abs().max()))
    return {"threads": torch.get_num_threads(), "layers": LAYERS, "steps_per_arm": steps, "rounds": ROUNDS,
            "engine_widths": {f"{i}x{o}": list(p[1]) for (i, o), p in sorted(plans.items())},
            "rows": out, "fixed_rows_bitwise_alone": invariant, "fixed_max_abs_diff_vs_f_linear": max_diff}


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline row and section for a result."""
    a1 = r["rows"]["1"]
    rows = [("one-row decode matmuls: a fixed-order kernel vs the engine's MKL blocks",
             f"{a1['engine_ms'] / a1['fixed_ms']:.2f}x ({a1['fixed_ms']:g} vs {a1['engine_ms']:g} ms)",
             "every row bitwise as alone", "pass" if r["fixed_rows_bitwise_alone"] else "FAIL")]
    lines = ["| live rows | engine rows (MLP blocks) | engine, ms/step | fixed order, ms/step | speed-up |",
             "|---|---|---|---|---|"]
    for n, a in r["rows"].items():
        lines.append(f"| {n} | {a['engine_rows']} | {a['engine_ms']:g} | {a['fixed_ms']:g} | "
                     f"{a['engine_ms'] / a['fixed_ms']:.2f}x |")
    lines.append(f"\nEvery row bitwise as alone: {r['fixed_rows_bitwise_alone']}; largest difference from "
                 f"F.linear {r['fixed_max_abs_diff_vs_f_linear']:.1e}. {r['threads']} threads, median of "
                 f"{r['rounds']} x {r['steps_per_arm']} steps an arm. Load average {r['load_avg_before']} before, "
                 f"{r['load_avg_after']} after.")
    return rows, lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fixed_matmul", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args(argv)
    from benchmarks import load_avg, machine, write_result

    record = {"machine": machine(), "load_avg_before": load_avg()}
    record.update(run(args.steps))
    record["load_avg_after"] = load_avg()
    write_result(args.out, record)
    print(json.dumps(record["rows"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
