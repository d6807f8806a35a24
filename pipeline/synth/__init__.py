"""Synthetic discharge-summary data: the default dataset of tailgate and its generator.

Stdlib only and seeded: `python -m pipeline.synth` rewrites data/raw/ and the discharge eval
suite byte for byte. Notes are synthetic (no real patients); gold summaries come from the
generator's structured truth, never from parsing the notes. See data/raw/README.md.
"""

from .dataset import DEFAULT_SEED, Dataset, build, outputs
from .discharge import INSTRUCTION, LONG_NOTE_TARGET_CHARS, SLICES, SYSTEM_PROMPT, Case, make_case
from .summary import FIELDS, Summary, render

__all__ = [
    "DEFAULT_SEED", "Dataset", "build", "outputs",
    "INSTRUCTION", "LONG_NOTE_TARGET_CHARS", "SLICES", "SYSTEM_PROMPT", "Case", "make_case",
    "FIELDS", "Summary", "render",
]
