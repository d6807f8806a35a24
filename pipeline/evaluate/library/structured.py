"""JSON library scorers: json_valid, json_schema, json_match (all finding the answer's JSON with
extract.extract_json)."""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from pipeline.evaluate.library._common import check_bool, check_str_list, metric_suffix, normalizer
from pipeline.evaluate.library.extract import extract_json
from pipeline.evaluate.scoring import Metric, Output, Scorer, library_scorer
from pipeline.suites.spec import EvalItem, Suite, SuiteError


# -- json_valid ----------------------------------------------------------------------------------

class JsonValid(Scorer):
    """`json_valid`: 1 when the answer contains a JSON value (an object, when require_object)."""

    name = "json_valid"
    declares = (Metric("json_valid", correctness=True),)

    def __init__(self, require_object: bool):
        self.require_object = require_object

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        found, value = extract_json(output.text, objects_only=self.require_object)
        ok = found and (isinstance(value, dict) or not self.require_object)
        return {"json_valid": float(ok)}


@library_scorer("json_valid")
def json_valid(suite: Suite, *, require_object: bool = True) -> Scorer:
    """Whether the answer holds JSON.

    The JSON is found as a reader would: the whole answer; else the first ```json (or unmarked
    ```) fenced block; else the first {...} span that parses (also [...] when require_object is
    false), so prose before or after the JSON is allowed. Strict JSON: no NaN/Infinity, no
    trailing commas, no single quotes.

    Output `json_valid` (correctness): 1 when such a value is found, else 0.

    Options:
      require_object: true (default) counts only a JSON object; false accepts any JSON value
        (a list, a string, a number).
    """
    return JsonValid(check_bool("json_valid", "require_object", require_object))


# -- json_schema ---------------------------------------------------------------------------------

class JsonSchemaValid(Scorer):
    """`json_schema_valid`: 1 when the answer's JSON validates against the suite's schema."""

    name = "json_schema"
    declares = (Metric("json_schema_valid", correctness=True),)

    def __init__(self, validator, objects_only: bool, schema_errors: tuple[type[Exception], ...]):
        self.validator, self.objects_only, self.schema_errors = validator, objects_only, schema_errors

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        found, value = extract_json(output.text, objects_only=self.objects_only)
        if not found:
            return {"json_schema_valid": 0.0}
        try:
            ok = self.validator.is_valid(value)
        except self.schema_errors as exc:  # the schema's fault (an unresolvable $ref), not the answer's
            raise SuiteError(f"scorer json_schema: the suite's JSON Schema cannot be applied ({exc})") from None
        except Exception:  # noqa: BLE001  an answer the validator chokes on (deep nesting, 1e999 with multipleOf)
            ok = False
        return {"json_schema_valid": float(ok)}


@library_scorer("json_schema")
def json_schema(suite: Suite) -> Scorer:
    """Whether the answer's JSON follows the suite's JSON Schema (`json_schema:` in suite.yaml).

    The JSON is found as by json_valid (when the schema's top-level type is "object", only
    objects are looked for). The schema's `$schema` picks the draft; without one it is read as
    Draft 2020-12. The schema itself is checked when the scorer is built. `format` keywords are
    annotations only (not asserted), as the JSON Schema specification's default.

    Output `json_schema_valid` (correctness): 1 when the extracted JSON validates, else 0 (also
    0 when the answer holds no JSON). No options.
    """
    import jsonschema
    from jsonschema.validators import validator_for

    schema = suite.json_schema
    if schema is None:
        raise SuiteError(f"suite {suite.name}: the json_schema scorer needs `json_schema:` (a schema file) "
                         "in suite.yaml")
    if not isinstance(schema, (dict, bool)):
        raise SuiteError(f"suite {suite.name}: the JSON Schema must be an object, not {type(schema).__name__}")
    cls = validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SuiteError(f"suite {suite.name}: invalid JSON Schema {suite.spec.json_schema}: {exc.message} "
                         f"(at {'/'.join(map(str, exc.path)) or 'top level'})") from None
    objects_only = isinstance(schema, dict) and schema.get("type") == "object"
    from referencing.exceptions import Unresolvable  # jsonschema >= 4.18 resolves $ref through referencing

    return JsonSchemaValid(cls(schema), objects_only, (Unresolvable,))


# -- json_match ----------------------------------------------------------------------------------

def _canonical(value: Any, norm: Callable[[str], str], unordered: bool) -> Any:
    """A hashable form of a JSON value under which equal-after-normalisation values are equal:
    strings normalised, numbers by value (1 == 1.0, but true is not 1), lists as sequences or
    multisets. Object keys are compared as written."""
    if isinstance(value, str):
        return ("s", norm(value))
    if isinstance(value, bool) or value is None:
        return ("c", value)
    if isinstance(value, (int, float)):
        return ("n", value)
    if isinstance(value, list):
        items = [_canonical(v, norm, unordered) for v in value]
        return ("m", frozenset(Counter(items).items())) if unordered else ("l", tuple(items))
    return ("d", frozenset((k, _canonical(v, norm, unordered)) for k, v in value.items()))


class JsonMatch(Scorer):
    """`json_key_accuracy` (right reference keys / (reference keys + extra answer keys)),
    `json_object_match` (all right, nothing extra) and `key_<k>` per listed key."""

    name = "json_match"

    def __init__(self, keys: list[str], norm: Callable[[str], str], ignore: frozenset[str], unordered: bool):
        self.keys, self.norm, self.ignore, self.unordered = keys, norm, ignore, unordered
        self.key_metrics = [f"key_{metric_suffix(k)}" for k in keys]
        self.declares = (Metric("json_key_accuracy"), Metric("json_object_match", correctness=True),
                         # n/a on an item whose reference lacks the key
                         *(Metric(m, correctness=True, partial=True) for m in self.key_metrics))

    def _reference(self, item: EvalItem) -> dict:
        found, ref = extract_json(item.reference, scan=False)
        if not found or not isinstance(ref, dict):
            raise SuiteError(f"scorer json_match: item {item.id}: the reference answer is not a JSON object "
                             "(the whole answer, or a ```json block)")
        return ref

    def _same(self, a: Any, b: Any) -> bool:
        try:
            return _canonical(a, self.norm, self.unordered) == _canonical(b, self.norm, self.unordered)
        except RecursionError:  # absurdly deep answer
            return False

    def score(self, output: Output, item: EvalItem) -> dict[str, float]:
        ref = self._reference(item)
        found, ans = extract_json(output.text, objects_only=True)
        listed = {m for k, m in zip(self.keys, self.key_metrics) if k in ref}
        if not found or not isinstance(ans, dict):
            return {m: 0.0 for m in self.metrics if m not in self.key_metrics or m in listed}
        ref_keys = [k for k in ref if k not in self.ignore]
        extra = sum(1 for k in ans if k not in ref and k not in self.ignore)
        right = sum(1 for k in ref_keys if k in ans and self._same(ans[k], ref[k]))
        denominator = len(ref_keys) + extra
        out = {"json_key_accuracy": right / denominator if denominator else 1.0,
               "json_object_match": float(right == len(ref_keys) and extra == 0)}
        for k, metric in zip(self.keys, self.key_metrics):
            # A key this item's reference lacks is n/a here: counting an omission as right would
            # dilute the key's figure on the slice where it matters with items that cannot fail.
            if k in ref:
                out[metric] = float(k in ans and self._same(ans[k], ref[k]))
        return out


@library_scorer("json_match")
def json_match(suite: Suite, *, keys: list[str] | None = None, normalize: list[str] | None = None,
               ignore_keys: list[str] = (), unordered_lists: bool = False) -> Scorer:
    """Key-by-key comparison of the answer's JSON object with the reference's.

    The reference answer must be a JSON object (the whole reference, or a ```json block); the
    answer's object is found as by json_valid. Values compare after normalising string leaves
    (at any depth), numbers by value (1 == 1.0; true is not 1), nested objects key by key.

    Outputs:
      json_key_accuracy: reference keys the answer gets right / (reference keys + keys the
        answer adds); a missing key is wrong, each extra key costs one. Not correctness.
      json_object_match (correctness): 1 when every reference key is right and nothing is
        added.
      key_<k> (correctness), one per key listed in `keys` (name lower-cased, characters outside
        [a-z0-9_] become `_`): 1 when the key is present and right; n/a (no value, in no mean)
        for an item whose reference lacks the key, so the report's n counts the items that have it.
      An answer without a JSON object scores 0 on all of them.

    Options:
      keys: the top-level keys to report one column each for (default none).
      normalize: steps applied to string values, as in exact_match (default `[case, whitespace]`).
      ignore_keys: top-level keys left out of every comparison (e.g. a free-text `notes`).
      unordered_lists: false (default) compares lists in order; true compares them as multisets.
    """
    where = "json_match"
    keys = [] if keys is None else check_str_list(where, "keys", keys, nonempty_items=True)
    ignore = frozenset(check_str_list(where, "ignore_keys", ignore_keys))
    both = sorted(set(keys) & ignore)
    if both:
        raise SuiteError(f"scorer {where}: keys {both} are both reported (keys) and ignored (ignore_keys)")
    names: dict[str, str] = {}
    for k in keys:
        other = names.setdefault(metric_suffix(k), k)
        if other != k:
            raise SuiteError(f"scorer {where}: keys {other!r} and {k!r} both become output key_{metric_suffix(k)}")
    return JsonMatch(list(dict.fromkeys(keys)), normalizer(where, normalize, ["case", "whitespace"]), ignore,
                     check_bool(where, "unordered_lists", unordered_lists))


__all__ = ["json_valid", "json_schema", "json_match"]
