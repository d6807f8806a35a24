"""curate stage: raw records -> validated, scrubbed, filtered, deduplicated, decontaminated splits.

Reads: params `curate`; raw files under the raw directory (JSONL, gzip JSONL, Parquet, CSV;
chat `messages` or `prompt`/`completion` records); every eval suite's items (for
decontamination); the base tokenizer and chat template (for lengths under the template).
Writes: `data/curated/train.jsonl`, `val.jsonl`, `quarantine.jsonl` (every rejected record
with source file, line number, reason code, detail and the raw line, or for an over-long line
its prefix, size and sha256), `meta.json` (context length, digests) and the report dict
(counts per check and reason, repairs, PII replacements, near-duplicate clusters, leaked eval
items, length histograms, one example per reason).

Nothing is dropped silently: every record read ends up in exactly one of train, val or
quarantine, and the report's counts add up to the number of records read, overall and per
slice. The run and the writer live in pipeline/curate/run.py; the checks and their order in
pipeline/curate/process.py; what the run and each slice may lose, in pipeline/curate/limits.py.
"""

from pipeline.curate.limits import NO_SLICE, CurationFailed, QuarantineTooLarge, SliceLimitUnknown, SliceLossTooLarge
from pipeline.curate.run import curate, write_curated

__all__ = ["NO_SLICE", "CurationFailed", "QuarantineTooLarge", "SliceLimitUnknown", "SliceLossTooLarge", "curate",
           "write_curated"]
