"""The scorer library (pipeline/evaluate/library): every scorer gives its reference answers a
perfect score on its correctness outputs, reads answers the way users write them (prose around
JSON, fenced blocks, a label in a sentence), never raises on a bad model answer (empty,
truncated, wrong types, garbage, huge), and refuses broken suites and options when the suite is
built, naming what is wrong."""

from __future__ import annotations

import inspect
import json
import math
import time

import pytest
import yaml

from pipeline.evaluate import library
from pipeline.evaluate.scoring import LIBRARY, Output, build_scorer, reference_output
from pipeline.suites.spec import SuiteError, load_suite

NAMES = ["exact_match", "json_valid", "json_schema", "json_match", "label", "choice", "contains", "rouge_l",
         "chrf", "refusal"]

PERSON = {"name": "Ada Lovelace", "age": 36, "tags": ["math", "poetry"], "notes": "first programmer"}
SCHEMA = {"type": "object", "required": ["name", "age"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "multipleOf": 2},
                         "tags": {"type": "array", "items": {"type": "string"}}}}


def make_suite(tmp_path, records, schema=None, **spec):
    for i, r in enumerate(records):
        r.setdefault("id", f"item{i}")
        r.setdefault("slice", "s")
        r.setdefault("prompt", "question?")
    (tmp_path / "items.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    base = {"name": "t", "version": 1, "data": "items.jsonl", "headline_metric": "x", "scorers": ["exact_match"],
            "generate_task": "t", **spec}
    if schema is not None:
        (tmp_path / "schema.json").write_text(json.dumps(schema))
        base["json_schema"] = "schema.json"
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(base))
    return load_suite(tmp_path)


def score(suite, entry, text, item=None, logprobs=None):
    item = item or suite.items()[0]
    return build_scorer(suite, entry)(Output(text, logprobs), item)


@pytest.fixture
def text_suite(tmp_path):
    return make_suite(tmp_path, [{"completion": "The Eiffel Tower", "must": ["iron"], "banned": "steel"}])


@pytest.fixture
def json_suite(tmp_path):
    return make_suite(tmp_path, [{"completion": json.dumps(PERSON)}], schema=SCHEMA)


@pytest.fixture
def label_suite(tmp_path):
    return make_suite(tmp_path, [{"completion": "positive"}, {"completion": "Negative"}],
                      labels=["positive", "negative", "neutral"])


@pytest.fixture
def choice_suite(tmp_path):
    return make_suite(tmp_path, [{"completion": "a much longer option", "options": ["a", "a much longer option"]}])


# -- every scorer --------------------------------------------------------------------------------

def test_the_library_registers_every_scorer():
    assert set(NAMES) <= set(LIBRARY)
    assert all(LIBRARY[n] is getattr(library, n) for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_docstrings_document_every_option(name):
    factory = LIBRARY[name]
    doc = inspect.getdoc(factory) or ""
    options = [p for p in inspect.signature(factory).parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert len(doc) > 80 and all(p.name in doc for p in options), (name, [p.name for p in options])


SUITE_FOR = {"exact_match": "text_suite", "contains": "text_suite", "rouge_l": "text_suite", "chrf": "text_suite",
             "refusal": "text_suite", "json_valid": "json_suite", "json_schema": "json_suite",
             "json_match": "json_suite", "label": "label_suite", "choice": "choice_suite"}
ENTRY = {n: n for n in NAMES} | {"contains": {"scorer": "contains", "must": ["tower"], "must_not": ["steel"]},
                                 "json_match": {"scorer": "json_match", "keys": ["name", "age"]}}
WRONG_TYPES = '{"name": ["Ada"], "age": "36", "tags": "math"}'  # a JSON object, but of the wrong types
ADVERSARIAL = [
    "", " ", "\n\n", "null", "0", "[]", '"x"', "true", "NaN", '{"a": NaN}', "{'name': 'Ada'}",
    json.dumps(PERSON)[:25],                                  # truncated mid-object
    WRONG_TYPES,
    "[" + json.dumps(PERSON) + "]",                            # a list, not an object
    "```json\n" + json.dumps(PERSON)[:-1] + "\n```",           # fenced, truncated
    "[" * 5000, "{" * 5000, '{"a": [' * 3000, '"\\' * 1000, "```" * 1000, "\x00\ud800\U0001f600",
    "I'm sorry, I cannot help with that.", "positive negative neutral", "9" * 5000,
    "lorem ipsum dolor { sit [ amet } ] " * 6000,              # huge garbage, ~200 kB
]


@pytest.mark.parametrize("name", NAMES)
def test_reference_answers_score_perfectly(name, request):
    suite = request.getfixturevalue(SUITE_FOR[name])
    s = build_scorer(suite, ENTRY[name])
    for item in suite.items():
        values = s(reference_output(item), item)
        assert set(values) == set(s.metrics)
        assert all(values[m] == 1.0 for m in s.correctness), values
        assert all(values[m] == 0.0 for m in s.lower_is_better), values


@pytest.mark.parametrize("name", NAMES)
def test_bad_answers_score_in_range_and_never_raise(name, request):
    suite = request.getfixturevalue(SUITE_FOR[name])
    s = build_scorer(suite, ENTRY[name])
    item = suite.items()[0]
    logprobs = reference_output(item).option_logprobs
    start = time.perf_counter()
    for text in ADVERSARIAL:
        values = s(Output(text, logprobs), item)  # Scorer.__call__ checks ranges and 0/1 correctness
        assert set(values) == set(s.metrics), text[:40]
        if name == "json_valid" and text == WRONG_TYPES:
            assert values == {"json_valid": 1.0}
        elif name != "choice":  # choice reads the log-likelihoods, not the text
            assert all(values[m] == 0.0 for m in s.correctness), (text[:40], values)
    assert time.perf_counter() - start < 3.0


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_is_a_suite_error(name, request):
    suite = request.getfixturevalue(SUITE_FOR[name])
    entry = ENTRY[name] if isinstance(ENTRY[name], dict) else {"scorer": name}
    with pytest.raises(SuiteError, match="no_such_option"):
        build_scorer(suite, {**entry, "no_such_option": 1})


# -- exact_match ---------------------------------------------------------------------------------

def test_exact_match_normalisation(text_suite):
    assert score(text_suite, "exact_match", "  The   Eiffel\nTower \n")["exact_match"] == 1.0
    assert score(text_suite, "exact_match", "the eiffel tower")["exact_match"] == 0.0
    assert score(text_suite, {"scorer": "exact_match", "normalize": []}, "The Eiffel Tower ")["exact_match"] == 0.0
    loose = {"scorer": "exact_match", "normalize": ["case", "whitespace", "punctuation", "articles"]}
    assert score(text_suite, loose, "«eiffel tower»!")["exact_match"] == 1.0
    assert score(text_suite, loose, "an Eiffel, tower.")["exact_match"] == 1.0
    assert score(text_suite, loose, "Eiffel Towers")["exact_match"] == 0.0
    assert score(text_suite, loose, "Eiffel $Tower")["exact_match"] == 0.0  # $ is a symbol, not punctuation


@pytest.mark.parametrize("normalize", [["lowercase"], "case", [1]])
def test_exact_match_bad_normalize(text_suite, normalize):
    with pytest.raises(SuiteError, match="normalize"):
        build_scorer(text_suite, {"scorer": "exact_match", "normalize": normalize})


# -- json_valid / json_schema ----------------------------------------------------------------------

@pytest.mark.parametrize("text, valid", [
    ('Sure! Here it is:\n{"a": 1}\nAnything else?', 1.0),
    ('```json\n{"a": [1, 2]}\n```', 1.0),
    ('```json\n{"a": [1, 2]}', 1.0),                            # closing fence cut by a stop string
    ('Result:\n```\n{"a": 1}\n```\nDone', 1.0),
    ('See [1] and {"a": "x}"} for details', 1.0),                # a list and a brace in a string
    ('{"a": "cut\n{"a": 2}', 1.0),                                # a broken start, then a good object
    ('{"a": 1, "b": {"c": ', 0.0),                                # truncated
    ('{"a": 1,}', 0.0), ("{'a': 1}", 0.0), ('{"a": Infinity}', 0.0),
    ("[1, 2]", 0.0), ("42", 0.0), ('"text"', 0.0),
])
def test_json_valid_reads_json_as_users_write_it(json_suite, text, valid):
    assert score(json_suite, "json_valid", text)["json_valid"] == valid


def test_json_valid_without_require_object(json_suite):
    entry = {"scorer": "json_valid", "require_object": False}
    assert [score(json_suite, entry, t)["json_valid"] for t in ("[1, 2]", " 42 ", "null", "x [1] y", "x 42 y")] \
        == [1.0, 1.0, 1.0, 1.0, 0.0]
    with pytest.raises(SuiteError, match="require_object"):
        build_scorer(json_suite, {"scorer": "json_valid", "require_object": "yes"})


def test_json_valid_huge_answers_are_fast(json_suite):
    s = build_scorer(json_suite, "json_valid")
    item = json_suite.items()[0]
    start = time.perf_counter()
    assert s(Output("x " * 1_000_000 + '{"a": 1}'), item)["json_valid"] == 1.0
    assert s(Output('{"a": 1, ' * 100_000), item)["json_valid"] == 0.0
    assert s(Output("x{" * 300_000), item)["json_valid"] == 0.0
    assert s(Output("{}" * 300_000), item)["json_valid"] == 1.0
    assert time.perf_counter() - start < 2.5


def test_json_schema_validates_the_extracted_object(json_suite):
    def valid(text):
        return score(json_suite, "json_schema", text)["json_schema_valid"]

    assert valid('Here you go: ```json\n{"name": "Ada", "age": 36}\n```') == 1.0
    assert valid('{"name": "Ada", "age": "36"}') == 0.0                 # string for integer
    assert valid('{"name": "Ada", "age": 35}') == 0.0                   # multipleOf
    assert valid('{"name": "Ada", "age": 1e400}') == 0.0                # overflows to inf: invalid, no crash
    assert valid('{"name": "Ada"}') == 0.0                              # required
    assert valid('{"name": "Ada", "age": 36, "tags": {"x": 1}}') == 0.0  # object for array
    assert valid('[{"name": "Ada", "age": 36}]') == 0.0


def test_json_schema_draft_defaults_to_2020_12(tmp_path):
    schema = {"type": "array", "prefixItems": [{"type": "string"}]}  # prefixItems is a 2020-12 keyword
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    new = make_suite(tmp_path / "a", [{"completion": '["x"]'}], schema=schema)
    old = make_suite(tmp_path / "b", [{"completion": '["x"]'}],
                     schema={"$schema": "http://json-schema.org/draft-07/schema#", **schema})
    assert score(new, "json_schema", "[1]")["json_schema_valid"] == 0.0
    assert score(old, "json_schema", "[1]")["json_schema_valid"] == 1.0


def test_json_schema_build_errors(tmp_path, text_suite):
    with pytest.raises(SuiteError, match="json_schema"):
        build_scorer(text_suite, "json_schema")
    (tmp_path / "bad").mkdir()
    broken = make_suite(tmp_path / "bad", [{"completion": "{}"}], schema={"type": "objekt"})
    with pytest.raises(SuiteError, match="invalid JSON Schema"):
        build_scorer(broken, "json_schema")
    (tmp_path / "ref").mkdir()
    dangling = make_suite(tmp_path / "ref", [{"completion": "{}"}],
                          schema={"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})
    with pytest.raises(SuiteError, match="cannot be applied"):
        score(dangling, "json_schema", '{"a": 1}')


# -- json_match ----------------------------------------------------------------------------------

MATCH = {"scorer": "json_match", "keys": ["name", "age", "Tags-List"]}


def match(suite, answer, entry=MATCH):
    text = answer if isinstance(answer, str) else json.dumps(answer)
    return score(suite, entry, text)


def test_json_match_values(json_suite):
    good = match(json_suite, {**PERSON, "name": "  ADA   lovelace", "age": 36.0})
    assert good["json_object_match"] == 1.0 and good["json_key_accuracy"] == 1.0
    assert good["key_name"] == good["key_age"] == 1.0
    assert "key_tags_list" not in good  # absent from the reference: n/a, not a free 1

    wrong_type = match(json_suite, {**PERSON, "age": "36"})
    assert wrong_type["key_age"] == 0.0 and wrong_type["json_key_accuracy"] == 0.75
    assert match(json_suite, {**PERSON, "age": True})["key_age"] == 0.0
    missing = match(json_suite, {k: v for k, v in PERSON.items() if k != "age"})
    assert missing["json_key_accuracy"] == 0.75 and missing["json_object_match"] == 0.0 and missing["key_age"] == 0.0
    extra = match(json_suite, {**PERSON, "Tags-List": []})
    assert extra["json_key_accuracy"] == 0.8 and extra["json_object_match"] == 0.0 and "key_tags_list" not in extra
    assert "key_tags_list" not in match(json_suite, "no JSON at all")  # n/a whatever the answer
    assert match(json_suite, "Here:\n```json\n" + json.dumps(PERSON) + "\n```")["json_object_match"] == 1.0
    assert match(json_suite, [PERSON])["json_key_accuracy"] == 0.0
    assert match(json_suite, json.dumps(PERSON)[:-10])["json_key_accuracy"] == 0.0


def test_json_match_lists_and_ignored_keys(json_suite):
    swapped = {**PERSON, "tags": ["poetry", "math"]}
    assert match(json_suite, swapped)["json_object_match"] == 0.0
    unordered = {"scorer": "json_match", "unordered_lists": True}
    assert match(json_suite, swapped, unordered)["json_object_match"] == 1.0
    assert match(json_suite, {**PERSON, "tags": ["math", "math"]}, unordered)["json_object_match"] == 0.0
    assert match(json_suite, {**PERSON, "tags": ["MATH", "poetry"]})["json_object_match"] == 1.0
    casey = {"scorer": "json_match", "normalize": []}
    assert match(json_suite, {**PERSON, "tags": ["MATH", "poetry"]}, casey)["json_object_match"] == 0.0
    ignore = {"scorer": "json_match", "ignore_keys": ["notes", "comment"]}
    loose = match(json_suite, {**PERSON, "notes": "other", "comment": "hi"}, ignore)
    assert loose["json_object_match"] == 1.0 and loose["json_key_accuracy"] == 1.0


def test_json_match_nested_objects(tmp_path):
    suite = make_suite(tmp_path, [{"completion": '{"addr": {"city": "Paris", "zip": 75001}}'}])
    assert score(suite, "json_match", '{"addr": {"zip": 75001.0, "city": "PARIS"}}')["json_object_match"] == 1.0
    assert score(suite, "json_match", '{"addr": {"city": "Paris"}}')["json_object_match"] == 0.0


def test_json_match_build_and_item_errors(tmp_path, json_suite):
    with pytest.raises(SuiteError, match="key_a_b"):
        build_scorer(json_suite, {"scorer": "json_match", "keys": ["a-b", "a_b"]})
    with pytest.raises(SuiteError, match="ignored"):
        build_scorer(json_suite, {"scorer": "json_match", "keys": ["notes"], "ignore_keys": ["notes"]})
    with pytest.raises(SuiteError, match="keys"):
        build_scorer(json_suite, {"scorer": "json_match", "keys": "name"})
    suite = make_suite(tmp_path, [{"id": "q7", "completion": "[1, 2]"}])
    with pytest.raises(SuiteError, match="q7"):
        score(suite, "json_match", "{}")


# -- label ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, accuracy, valid", [
    ("Positive.", 1.0, 1.0),
    ("Sentiment: POSITIVE\nThe negative parts are minor.", 1.0, 1.0),
    ("negative", 0.0, 1.0),
    ("positive or negative", 0.0, 0.0),         # two labels named
    ("Let me think.\npositive", 0.0, 0.0),      # not on the first line
    ("positively", 0.0, 0.0),                   # not a whole word
    ("happy", 0.0, 0.0),                        # unknown label
])
def test_label_reads_the_answer(label_suite, text, accuracy, valid):
    assert score(label_suite, "label", text) == {"label_accuracy": accuracy, "label_valid": valid}


def test_label_prefers_the_longer_label(label_suite):
    entry = {"scorer": "label", "labels": ["positive", "very positive", "negative"]}
    item = label_suite.items()[0]  # reference: positive
    assert score(label_suite, entry, "I'd say very positive!", item) == {"label_accuracy": 0.0, "label_valid": 1.0}
    assert score(label_suite, entry, "I'd say positive!", item) == {"label_accuracy": 1.0, "label_valid": 1.0}


def test_label_errors(tmp_path, label_suite):
    with pytest.raises(SuiteError, match="label set"):
        build_scorer(make_suite(tmp_path, [{"completion": "x"}]), "label")
    with pytest.raises(SuiteError, match="same once normalised"):
        build_scorer(label_suite, {"scorer": "label", "labels": ["Yes", "yes."]})
    only_neg = build_scorer(label_suite, {"scorer": "label", "labels": ["negative", "neutral"]})
    item = label_suite.items()[0]
    with pytest.raises(SuiteError, match=item.id):
        only_neg(Output("negative"), item)


# -- choice --------------------------------------------------------------------------------------

def test_choice_accuracy_and_length_normalised_accuracy(choice_suite):
    item = choice_suite.items()[0]  # options ["a", "a much longer option"], reference the second
    s = build_scorer(choice_suite, "choice")
    assert s.needs_choices
    assert s(Output("", (-2.0, -10.0)), item) == {"choice_accuracy": 0.0, "choice_accuracy_norm": 1.0}
    assert s(Output("", (-30.0, -10.0)), item) == {"choice_accuracy": 1.0, "choice_accuracy_norm": 1.0}
    assert s(Output("", (-1.0, -1.0)), item)["choice_accuracy"] == 0.0  # a tie goes to the first option


@pytest.mark.parametrize("logprobs", [None, (0.0,), (0.0, -1.0, -2.0), (math.nan, -1.0)])
def test_choice_without_matching_logprobs_is_an_evaluation_bug(choice_suite, logprobs):
    with pytest.raises(SuiteError, match="item0"):
        score(choice_suite, "choice", "a", logprobs=logprobs)


def test_choice_needs_options(text_suite):
    with pytest.raises(SuiteError, match="no options"):
        score(text_suite, "choice", "x", logprobs=(0.0, -1.0))


# -- contains ------------------------------------------------------------------------------------

def test_contains_conditions(text_suite):
    def ok(text, **options):
        return score(text_suite, {"scorer": "contains", **options}, text)["contains_ok"]

    assert ok("The IRON lady", must=["iron"]) == 1.0
    assert ok("The IRON lady", must=["iron"], case_sensitive=True) == 0.0
    assert ok("", must_not=["steel"]) == 1.0 and ok("", must=["iron"]) == 0.0
    assert ok("made of Steel", must_not=["steel"]) == 0.0
    assert ok("Dose: 5 mg", regex=[r"\d+\s*MG"]) == 1.0
    assert ok("Dose: 5 mg", regex=[r"\d+\s*MG"], case_sensitive=True) == 0.0
    assert ok("call 555-1234", must_not_regex=[r"\d{3}-\d{4}"]) == 0.0
    assert ok("iron and steel", must_from="must") == 1.0
    assert ok("iron and steel", must_not_from="banned") == 0.0
    assert ok("iron only", must_from="must", must_not_from="banned") == 1.0


def test_contains_must_from_is_na_where_the_item_has_nothing_to_require(tmp_path):
    """A null must_from field gives no value: an item that cannot fail must not dilute the mean
    (or the flip rate) of the items that can; it shows up in the report's n instead."""
    from pipeline.evaluate.stats import summarize

    suite = make_suite(tmp_path, [{"completion": "escalate: security", "must": ["security"]},
                                  {"completion": "routine", "must": None}])
    scorer = build_scorer(suite, {"scorer": "contains", "must_from": "must", "correctness": ["contains_ok"]})
    tail, common = suite.items()
    assert scorer(Output("nothing relevant"), tail) == {"contains_ok": 0.0}
    assert scorer(Output("anything"), common) == {}
    values = [v for it in (tail, common) for v in scorer(Output("nothing relevant"), it).values()]
    assert summarize(values, 50, 0)["n"] == 1 and summarize(values, 50, 0)["mean"] == 0.0
    # a null must_not_from still means nothing is forbidden: the item is scored
    banned = build_scorer(suite, {"scorer": "contains", "must": ["e"], "must_not_from": "must"})
    assert banned(Output("routine"), common) == {"contains_ok": 1.0}


def test_contains_name_and_correctness(text_suite):
    s = build_scorer(text_suite, {"scorer": "contains", "must": ["x"], "name": "has_x"})
    assert s.metrics == ("has_x",) and s.correctness == ()
    entry = {"scorer": "contains", "must": ["x"], "name": "has_x", "correctness": ["has_x"]}
    declared = build_scorer(text_suite, entry)
    assert declared.correctness == ("has_x",)
    assert declared(Output("a x b"), text_suite.items()[0]) == {"has_x": 1.0}


@pytest.mark.parametrize("options, message", [
    ({"regex": ["ok", "(unclosed"]}, r"\(unclosed"),
    ({"must_not_regex": ["[z-a]"]}, r"\[z-a\]"),
    ({}, "no condition"),
    ({"must": "iron"}, "must"),
    ({"must": [""]}, "must"),
    ({"must": ["x"], "name": "bad name"}, "name"),
    ({"must": ["x"], "case_sensitive": "no"}, "case_sensitive"),
])
def test_contains_build_errors(text_suite, options, message):
    with pytest.raises(SuiteError, match=message):
        build_scorer(text_suite, {"scorer": "contains", **options})


def test_contains_record_field_errors_name_the_item(text_suite):
    with pytest.raises(SuiteError, match="item0.*nope"):
        score(text_suite, {"scorer": "contains", "must_from": "nope"}, "x")


# -- rouge_l / chrf ------------------------------------------------------------------------------

def test_rouge_l(tmp_path):
    suite = make_suite(tmp_path, [{"completion": "the cat sat on the mat"}])
    assert score(suite, "rouge_l", "the cat on the mat")["rouge_l"] == pytest.approx(2 * (5 / 6) / (1 + 5 / 6))
    assert score(suite, "rouge_l", "dogs bark")["rouge_l"] == 0.0
    stemmed = {"scorer": "rouge_l", "use_stemmer": True}
    assert score(suite, stemmed, "the cats sitting")["rouge_l"] > score(suite, "rouge_l", "the cats sitting")["rouge_l"]
    start = time.perf_counter()
    assert 0.0 < score(suite, "rouge_l", "the cat sat on the mat " * 50_000)["rouge_l"] < 0.01
    assert time.perf_counter() - start < 2.0
    with pytest.raises(SuiteError, match="use_stemmer"):
        build_scorer(suite, {"scorer": "rouge_l", "use_stemmer": "porter"})


def test_chrf(tmp_path):
    suite = make_suite(tmp_path, [{"completion": "the cat sat on the mat"}])
    partial = score(suite, "chrf", "the cat sat on a mat")["chrf"]
    assert 0.5 < partial < 1.0
    assert score(suite, {"scorer": "chrf", "word_order": 2}, "the cat sat on a mat")["chrf"] != partial
    for bad in ({"char_order": 0}, {"word_order": -1}, {"char_order": 2.5}, {"char_order": True}):
        with pytest.raises(SuiteError, match="order"):
            build_scorer(suite, {"scorer": "chrf", **bad})


# -- refusal -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("", 1.0), ("  \n ", 1.0), ("I'm sorry, but I can't help.", 1.0), ("  AS AN AI, I have no views", 1.0),
    ("I cannot do that", 1.0), ("i am unable to comply", 1.0),
    ("Sure. I'm sorry to hear that.", 0.0), ("I can\u2019t", 0.0), ("Sorry, no.", 0.0), ("The Eiffel Tower", 0.0),
])
def test_refusal_default_phrases(text_suite, text, value):
    s = build_scorer(text_suite, "refusal")
    assert s.lower_is_better == ("empty_or_refusal",) and s.correctness == ()
    assert s(Output(text), text_suite.items()[0]) == {"empty_or_refusal": value}


def test_refusal_phrases_replace_the_defaults(text_suite):
    entry = {"scorer": "refusal", "phrases": ["Sorry"]}
    assert score(text_suite, entry, "sorry, no")["empty_or_refusal"] == 1.0
    assert score(text_suite, entry, "I'm sorry")["empty_or_refusal"] == 0.0
    assert score(text_suite, entry, "")["empty_or_refusal"] == 1.0
    with pytest.raises(SuiteError, match="phrases"):
        build_scorer(text_suite, {"scorer": "refusal", "phrases": []})
