"""DVC stage `train`: QLoRA fine-tuning of LoRA adapters on the frozen pre-quantized base.

Reads params `train`, --base-q, --base (the 16-bit base: tokenizer, and weights when
train.base_precision=reference), --data; writes --out (the adapter), --report and
--plot (loss curve for `dvc plots show`). Checkpoints go to --checkpoints while it runs: kill
it and run it again (or `dvc repro`) and it resumes from the last complete one.
"""

from __future__ import annotations

import csv
import io
import sys

from pipeline import cli
from pipeline.files import atomic_write_json, atomic_write_text
from pipeline.params import load_section
from pipeline.train import train
from pipeline.train.distributed import is_main_process


def main(argv=None) -> int:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--base-q", default="artifacts/base_q")
    p.add_argument("--base", default="artifacts/base")
    p.add_argument("--data", default="data/curated")
    p.add_argument("--out", default="artifacts/adapter")
    p.add_argument("--report", default="reports/train.json")
    p.add_argument("--plot", default="reports/plots/train_loss.csv")
    p.add_argument("--metrics", default="reports/metrics/train.json")
    p.add_argument("--checkpoints", default=".checkpoints/train",
                   help="resumable checkpoints (outside DVC's outputs, which DVC deletes before a run)")

    def body(args):
        params = load_section("train", args.params)
        report = train(params, args.base_q, args.base, args.data, args.out, args.checkpoints)
        if not is_main_process():  # under a launcher only rank 0 writes (the adapter too)
            return
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["step", "loss", "val_loss"])
        val = {v["step"]: v["val_loss"] for v in report["val"]}
        for s in report["steps"]:
            writer.writerow([s["step"], s["loss"], val.get(s["step"], "")])
        atomic_write_text(args.plot, buf.getvalue())
        atomic_write_json(args.report, report)
        atomic_write_json(args.metrics, {k: report[k] for k in (
            "loss_first10_mean", "loss_last10_mean", "final_val_loss", "train_time_s", "real_tokens_per_s",
            "peak_rss_mb", "optimizer")})
        cli.log.info("train: loss %.3f -> %.3f in %.0f s, %.0f real tokens/s, peak RSS %.0f MB, optimizer %s",
                     report["loss_first10_mean"], report["loss_last10_mean"], report["train_time_s"],
                     report["real_tokens_per_s"], report["peak_rss_mb"], report["optimizer"])

    return cli.run(body, p, argv)


if __name__ == "__main__":
    sys.exit(main())
