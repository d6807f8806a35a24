"""The scorer library: the common task shapes, registered by name for suite.yaml `scorers:`.

Importing this package registers every library scorer (pipeline.evaluate.scoring.LIBRARY);
each factory's docstring is its user documentation. Modules: text (exact_match, contains,
refusal), structured (json_valid, json_schema, json_match), classify (label, choice), overlap
(rouge_l, chrf); extract holds extract_json, the JSON finding the JSON scorers share.
"""

from pipeline.evaluate.library import classify, extract, overlap, structured, text  # noqa: F401  (registers)
from pipeline.evaluate.library.classify import choice, label
from pipeline.evaluate.library.overlap import chrf, rouge_l
from pipeline.evaluate.library.structured import json_match, json_schema, json_valid
from pipeline.evaluate.library.text import contains, exact_match, refusal

__all__ = ["exact_match", "json_valid", "json_schema", "json_match", "label", "choice", "contains",
           "rouge_l", "chrf", "refusal"]
