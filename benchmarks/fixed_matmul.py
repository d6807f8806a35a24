"""The decode blocks' product: the fixed-order kernel beside the BLAS blocks it replaced.

    python -m benchmarks.fixed_matmul --out benchmarks/results/fixed_matmul.json [--steps 5]

A batch-invariant engine must compute a decode row the same whatever else is in its pass. With
a BLAS that takes blocks: MKL picks its kernel by the number of rows, so rows were multiplied in
blocks of widths probed per shape and per machine (pipeline/engines/widths.py; a lone row as a
block of 2 or 4). The fixed-order kernel (pipeline/engines/fixedmm.py) computes every output in
one order whatever the number of rows, so the live rows are one block, and it is what the
engine runs for float32 on the CPU; the BLAS blocks remain its fallback (TAILGATE_DECODE_KERNEL=
blas, or a bfloat16 compute dtype).

A 4-bit base's layers are multiplied from their codes (pipeline/engines/fixedmm4.cpp): the same
order on weights dequantized in registers, an eighth of the bytes, the same bits.

Per decode step over the default base's matmul shapes (30 layers of q, k, v, o, gate, up, down
and the 49,152-row output head; random float32 weights, since the time depends on the shapes
only) and for 1, 3, 8, 13 and 32 live rows: the median time of the BLAS blocks (the probed
widths, each multiplied as the probe says), of the kernel on exactly the live rows, and of the
kernel from the layers' NF4 codes (the weights quantized by bitsandbytes, the head float32 as in
the engine), the arms alternating. Checked: every row of the kernel's output equals that row
computed alone, bit for bit, the codes arm gives the dense arm's bits on the dequantized weights,
and the kernel's largest difference from `F.linear`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

# The default base (SmolLM2-135M): hidden 576, 9 query and 3 key/value heads of 64, MLP 1536.
LAYERS, HIDDEN, KV, MLP, VOCAB = 30, 576, 192, 1536, 49152
SHAPES = ((HIDDEN, HIDDEN), (HIDDEN, KV), (HIDDEN, KV), (HIDDEN, HIDDEN),
          (HIDDEN, MLP), (HIDDEN, MLP), (MLP, HIDDEN))  # (in, out) of q, k, v, o, gate, up, down
LIVE = (1, 3, 8, 13, 32)
ROUNDS = 2


def run(steps: int) -> dict:
    import torch
    import torch.nn.functional as F

    from pipeline.engines import fixedmm
    from pipeline.engines.blockmm import block_linear, orientation
    from pipeline.engines.rowwise import DECODE_WIDTH, blocks_of
    from pipeline.engines.widths import cover, widths

    kernel = fixedmm.linear
    torch.manual_seed(0)
    weights = [torch.randn(o, i) * 0.05 for _ in range(LAYERS) for i, o in SHAPES] + [torch.randn(VOCAB, HIDDEN) * 0.05]
    dequantized, codes_ok = _four_bit(weights[:-1])  # the layers as NF4, the head float32
    dequantized.append(weights[-1])
    plans = {}
    for w in weights:
        key = (w.shape[1], w.shape[0])
        if key not in plans:
            how = orientation(*key, torch.float32, False, DECODE_WIDTH, "cpu", fixed=False)  # the BLAS's way
            plans[key] = (how, widths(*key, torch.float32, False, how, DECODE_WIDTH, "cpu"))

    def blas_step(xs):
        for w in weights:
            how, allowed = plans[(w.shape[1], w.shape[0])]
            x = xs[w.shape[1]]
            torch.cat([block_linear(b, w, None, how) for b in blocks_of(x, cover(x.shape[0], allowed))])

    def fixed_step(xs):
        for w in weights:
            kernel(xs[w.shape[1]], w)

    def codes_step(xs):
        for w in dequantized:
            kernel(xs[w.shape[1]], w)

    out = {}
    with torch.inference_mode():
        for n in LIVE:
            xs = {HIDDEN: torch.randn(n, HIDDEN), MLP: torch.randn(n, MLP)}
            times = {"blas": [], "fixed": [], "codes": []}
            for _ in range(ROUNDS):
                for name, step in (("blas", blas_step), ("fixed", fixed_step), ("codes", codes_step)):
                    step(xs)  # warm: caches, the probe's first call
                    for _ in range(steps):
                        t0 = time.perf_counter()
                        step(xs)
                        times[name].append(time.perf_counter() - t0)
            blas_ms, fixed_ms, codes_ms = (statistics.median(times[k]) * 1e3 for k in ("blas", "fixed", "codes"))
            out[str(n)] = {"blas_rows": sum(cover(n, plans[(HIDDEN, MLP)][1])), "blas_ms": round(blas_ms, 1),
                           "fixed_ms": round(fixed_ms, 1), "speedup": round(blas_ms / fixed_ms, 3),
                           "codes_ms": round(codes_ms, 1), "codes_speedup_vs_fixed": round(fixed_ms / codes_ms, 3)}
        # every row as it is alone, for every shape; and how far the kernel's sums are from MKL's
        invariant, max_diff = True, 0.0
        for i, o in set(SHAPES) | {(HIDDEN, VOCAB)}:
            w = next(x for x in weights if tuple(x.shape) == (o, i))
            x = torch.randn(13, i)
            together = kernel(x, w)
            invariant &= all(torch.equal(kernel(x[r:r + 1], w)[0], together[r]) for r in range(13))
            invariant &= torch.equal(kernel(x[:5], w), together[:5])
            max_diff = max(max_diff, float((together - F.linear(x, w)).abs().max()))
        for w in dequantized[:len(SHAPES)]:  # from the codes: the dense kernel's bits on the same weights
            x = torch.randn(13, w.shape[1])
            codes_ok &= torch.equal(kernel(x, w), fixedmm._extension().fixed_linear(x, w, False))
    return {"codes_path": fixedmm._extension().path_4bit(HIDDEN, 64), "codes_bitwise_as_dense": bool(codes_ok),
            "threads": torch.get_num_threads(), "layers": LAYERS, "steps_per_arm": steps, "rounds": ROUNDS,
            "kernel_path": fixedmm.path(), "blas_widths": {f"{i}x{o}": list(p[1]) for (i, o), p in sorted(plans.items())},
            "rows": out, "fixed_rows_bitwise_alone": invariant, "fixed_max_abs_diff_vs_f_linear": max_diff}


def _four_bit(weights):
    """The weights quantized as the default base is (NF4, nested absmax, blocks of 64) and prepared
    as the engine prepares a model (pipeline/engines/dequant.py): for each, the dequantized float32
    copy the first inference call keeps, its codes attached, and whether every one attached (its
    codes reproduce it bit for bit)."""
    import bitsandbytes as bnb
    import torch

    from pipeline.engines import fixedmm
    from pipeline.engines.dequant import prepare_for_inference

    kept, ok = [], True
    for w in weights:
        layer = bnb.nn.Linear4bit(w.shape[1], w.shape[0], bias=False, compute_dtype=torch.float32,
                                  quant_type="nf4", compress_statistics=True)
        layer.weight = bnb.nn.Params4bit(w, requires_grad=False, quant_type="nf4", compress_statistics=True)
        layer = layer.to("cpu").eval()
        prepare_for_inference(torch.nn.Sequential(layer))
        with torch.inference_mode():
            layer(torch.zeros(1, w.shape[1]))
        dense = layer.tailgate_kept[torch.float32]
        ok &= fixedmm.attached(dense)
        kept.append(dense)
    return kept, ok


def page(r: dict) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """RESULTS.md's headline row and section for a result."""
    a1 = r["rows"]["1"]
    rows = [("one-row decode matmuls: the fixed-order kernel vs the BLAS blocks",
             f"{a1['blas_ms'] / a1['fixed_ms']:.2f}x ({a1['fixed_ms']:g} vs {a1['blas_ms']:g} ms)",
             "every row bitwise as alone", "pass" if r["fixed_rows_bitwise_alone"] else "FAIL")]
    if "codes_ms" in a1:
        rows.append(("one-row decode matmuls: from the NF4 codes vs the float32 copy",
                     f"{a1['fixed_ms'] / a1['codes_ms']:.2f}x ({a1['codes_ms']:g} vs {a1['fixed_ms']:g} ms)",
                     "the same bits", "pass" if r["codes_bitwise_as_dense"] else "FAIL"))
    codes = "codes_ms" in a1
    lines = ["| live rows | BLAS rows (MLP blocks) | BLAS blocks, ms/step | fixed order, ms/step | speed-up |"
             + (" from NF4 codes, ms/step | codes vs float32 |" if codes else ""),
             "|---|---|---|---|---|" + ("---|---|" if codes else "")]
    for n, a in r["rows"].items():
        lines.append(f"| {n} | {a['blas_rows']} | {a['blas_ms']:g} | {a['fixed_ms']:g} | "
                     f"{a['blas_ms'] / a['fixed_ms']:.2f}x |"
                     + (f" {a['codes_ms']:g} | {a['fixed_ms'] / a['codes_ms']:.2f}x |" if codes else ""))
    lines.append(f"\nEvery row bitwise as alone: {r['fixed_rows_bitwise_alone']}; largest difference from "
                 f"F.linear {r['fixed_max_abs_diff_vs_f_linear']:.1e}; the kernel's {r['kernel_path']} path"
                 + (f", from codes its {r['codes_path']} path, the same bits as the float32 copy: "
                    f"{r['codes_bitwise_as_dense']}" if codes else "") + f". {r['threads']} threads, median of "
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
