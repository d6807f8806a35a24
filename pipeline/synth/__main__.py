"""Write (or check) the default synthetic dataset.

    python -m pipeline.synth --seed 20261123 --raw-dir data/raw --suite-dir eval_suites/discharge/data
    python -m pipeline.synth --check   # exit 1 if the committed files differ from a fresh build
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.files import atomic_write_text

from .dataset import DEFAULT_SEED, DEFECTS_FILE, RAW_FILE, SPELLINGS_FILE, SUITE_FILE, build, outputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.synth", description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--raw-dir", type=Path, default=Path("data/raw"))
    ap.add_argument("--suite-dir", type=Path, default=Path("eval_suites/discharge/data"))
    ap.add_argument("--check", action="store_true", help="compare with the files on disk, write nothing")
    args = ap.parse_args(argv)

    texts = outputs(build(args.seed))
    targets = {RAW_FILE: args.raw_dir, DEFECTS_FILE: args.raw_dir, SUITE_FILE: args.suite_dir, SPELLINGS_FILE: args.suite_dir}
    stale = []
    for name, text in texts.items():
        path = targets[name] / name
        if args.check:
            if not path.is_file() or path.read_bytes() != text.encode("utf-8"):
                stale.append(str(path))
        else:
            atomic_write_text(path, text)
            print(f"wrote {path} ({text.count(chr(10))} lines)")
    if stale:
        print("out of date (regenerate with python -m pipeline.synth): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
