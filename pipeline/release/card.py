"""The model card (a Hugging Face style README.md) that every release carries.

`render_card` is pure: the card is built only from the verified bundle's manifest, the eval and
gate reports of that same bundle, and the release facts passed in. It refuses to render when a
report describes another bundle or the gate report has no verdict, because a card that claims
numbers or a verdict for the wrong bundle is worse than no card. Optional report sections that
are missing (older reports, fixtures) become "not measured" instead of errors. The report is
read by its own `headline_metric`, so any suite's report renders, older report shapes too.

The front matter is huggingface_hub's ModelCardData (pipeline/release/card_data.py), and the
card is refused unless it passes the Hub client's offline checks (`check_card_metadata`).
"""

from __future__ import annotations

import json
import math
import re
from typing import TYPE_CHECKING, Any

from pipeline.bundle.verify import adapter_trained_on, shipped_base_digest
from pipeline.files import files_digest
from pipeline.release.card_data import META_ORDER, card_data, check_card_metadata, comparison_lines
from pipeline.release.card_data import get_path as _get
from pipeline.release.card_data import is_number as _isnum
from pipeline.report_paths import metric_names

if TYPE_CHECKING:
    from pipeline.bundle.manifest import Manifest

# Columns beside the headline metric in the slice table: the metrics the suite marks as
# correctness or lower-is-better (what gates name), then the NLL. Reports older than those
# marks get the columns the card always showed them.
_SIDE_COLUMNS = 5
_LEGACY_SIDE_METRICS = ("format_valid", "hallucination", "list_f1", "exact_match", "nll_per_token")
_QUANTILES = ("p50", "p90", "p99", "max", "worst5pct_mean")
_MISSING = "not measured"


def _f(v: Any, signed: bool = False) -> str:
    if not _isnum(v):
        return "-"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _ci(m: dict | None) -> str:
    """`mean [low, high]`, the form the tests and readers look for."""
    if not isinstance(m, dict) or not _isnum(m.get("mean")):
        return "-"
    ci = m.get("ci95")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_isnum(x) for x in ci):
        return f"{m['mean']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"
    return f"{m['mean']:.3f}"


def _val(v: Any) -> str:
    if v is None:
        return "missing"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return _f(v)
    s = str(v).replace("|", "/")
    # Digests in rule values are shortened; the full ones are under Provenance.
    return s[:12] + "..." if len(s) == 64 and all(c in "0123456789abcdef" for c in s) else s


def _rule_vals(r: dict) -> tuple[str, str]:
    """Value and threshold at 3 decimals, unless that rounding would make a failing rule look
    like it sits exactly on its threshold."""
    v, t = r.get("value"), r.get("threshold")
    if _isnum(v) and _isnum(t) and _f(v) == _f(t) and v != t:
        return f"{v:.6g}", f"{t:.6g}"
    return _val(v), _val(t)


def _check(manifest: Manifest, eval_report: dict, gate_report: dict) -> bool:
    want = getattr(manifest, "bundle_digest", None)
    if not want:
        raise ValueError("manifest has no bundle_digest")
    for name, rep in (("eval", eval_report), ("gate", gate_report)):
        got = rep.get("bundle_digest") if isinstance(rep, dict) else None
        if not got:
            raise ValueError(f"{name} report has no bundle_digest; the card binds to manifest {want}")
        if got != want:
            raise ValueError(f"{name} report is for bundle {got}, but the manifest is bundle {want}")
    passed = gate_report.get("passed")
    if not isinstance(passed, bool):
        raise ValueError(f"gate report has no verdict (passed={passed!r}); refusing to claim one")
    failing = [r.get("name") for r in gate_report.get("rules") or [] if not r.get("passed")]
    if passed and (failing or gate_report.get("failed")):
        raise ValueError(f"gate report says passed but lists failing rules: {failing or gate_report['failed']}")
    return passed


def _summary(m: Manifest, ev: dict, base_model: str | None) -> list[str]:
    lora = m.adapter.lora_config
    targets = lora.get("target_modules")
    targets = ", ".join(targets) if isinstance(targets, (list, tuple)) else targets
    src = ", ".join(f"{k} `{v}`" for k, v in sorted(m.base.source.items()))
    base = f"`{base_model}`" if base_model else "the base model"
    q = m.quantization
    quant = ("kept at 16 bits (plain LoRA, no quantization)" if q.method == "none" else
             f"quantized to 4-bit {q.method.upper()}"
             f"{' with double quantization' if _get(q.bnb_config, 'bnb_4bit_use_double_quant') else ''}"
             f" (bitsandbytes {q.bitsandbytes_version})")
    trained = {"shipped": "the shipped base" + (" (QLoRA)" if q.method != "none" else ""),
               "reference": "the 16-bit base (quantized after training)"}.get(
        adapter_trained_on(m), f"another base (digest {m.adapter.base_digest})")
    suite = ev.get("suite") or {}
    items = f" ({suite['items']} items)" if "items" in suite else ""
    if suite.get("limited"):
        items = (f" (**a limited evaluation: {suite['items']} of its {suite.get('suite_items')} items**, "
                 f"evaluate.limit = {suite.get('limit_per_slice')} per slice, released under "
                 "gate.allow_limited_evaluation)")
    invariant = _get(ev, "engine", "batch_invariant")
    said = {True: "True; served answers under any load are the evaluated ones (see Served under load)",
            None: "not recorded"}.get(invariant, str(invariant))
    engine = f"`{_get(ev, 'engine', 'name')}` engine (exact: {_get(ev, 'engine', 'exact')}, batch-invariant: {said})"
    tuned = (f" It was evaluated on the `{suite['name']}` suite v{suite.get('version')}{items} through the "
             f"{engine}.") if suite.get("name") else ""
    return [f"A LoRA adapter (r={lora.get('r')}, alpha={lora.get('lora_alpha')}, dropout {lora.get('lora_dropout')}, "
            f"targets: {targets}) for {base} ({m.base.architecture}, {m.base.num_parameters:,} parameters; "
            f"base from {src}), shipped on that base {quant}, compute dtype {q.compute_dtype}. "
            f"The adapter was trained on {trained}.{tuned} Bundle `{m.bundle_digest}`.", ""]


def _gate(gate: dict, passed: bool) -> list[str]:
    rules = gate.get("rules") or []
    failed = [r for r in rules if not r.get("passed")]
    out = [f"## Gate verdict: {'PASS' if passed else 'FAIL'}", "",
           f"{len(rules)} rules checked, {len(rules) - len(failed)} passed, {len(failed)} failed.", ""]
    if failed:
        out += ["Failed rules:", ""]
        for r in failed:
            v, t = _rule_vals(r)
            out.append(f"- **{r.get('name')}**: {v} (needs {r.get('op')} {t})"
                       f"{'; ' + r['note'] if r.get('note') else ''}")
        out.append("")
    elif not passed:
        out += ["Failed rules: " + ", ".join(f"**{n}**" for n in gate.get("failed") or ["(not listed)"]), ""]
    if rules:
        out += ["| rule | value | op | threshold | pass |", "|---|---|---|---|---|"]
        for r in rules:
            v, t = _rule_vals(r)
            out.append(f"| {r.get('name')} | {v} | {r.get('op')} | {t} | {'yes' if r.get('passed') else '**no**'} |")
        out.append("")
    return out


def _quantization(m: Manifest) -> list[str]:
    q = m.quantization
    out = ["## Quantization", ""]
    if q.method == "none" or not q.bnb_config:
        return out + [f"None: the base ships in 16 bits ({q.compute_dtype}); bitsandbytes "
                      f"{q.bitsandbytes_version} recorded.", ""]
    c = q.bnb_config
    facts = [("method", q.method), ("quant type", c.get("bnb_4bit_quant_type")),
             ("double quantization", c.get("bnb_4bit_use_double_quant")),
             ("compute dtype", c.get("bnb_4bit_compute_dtype", q.compute_dtype)),
             ("blocksize", c.get("bnb_4bit_blocksize", c.get("blocksize"))),
             ("storage dtype", c.get("bnb_4bit_quant_storage")), ("bitsandbytes", q.bitsandbytes_version),
             ("measured bits per quantized parameter", _f(q.bits_per_param) if q.bits_per_param else None)]
    out += [f"- {k}: {v if isinstance(v, str) else _val(v)}" for k, v in facts if v is not None]
    return out + ["", "Full `BitsAndBytesConfig`:", "", "```json", json.dumps(c, indent=2, sort_keys=True), "```", ""]


def _side_metrics(ev: dict, metric: str, slices: dict, named: list[str]) -> list[str]:
    """Every metric a gate rule names, then correctness and lower-is-better ones up to
    _SIDE_COLUMNS; the rest are pointed to, not hidden."""
    suite = ev.get("suite") or {}
    marked = [*(suite.get("correctness_metrics") or []), *(suite.get("lower_is_better") or [])]
    wanted = [*dict.fromkeys(marked), "nll_per_token"] if marked else _LEGACY_SIDE_METRICS
    present = [k for k in dict.fromkeys([*named, *wanted]) if k != metric and any(k in s for s in slices.values())]
    must = [k for k in present if k in named]
    return must + [k for k in present if k not in must][:max(0, _SIDE_COLUMNS - len(must))]


def _n(s: dict) -> str:
    n, full = s.get("n", "-"), s.get("suite_n")
    return str(n) if full is None or full == n else f"{n} of {full}"


def _results(ev: dict, gate: dict) -> list[str]:
    metric, slices = ev.get("headline_metric"), ev.get("slices") or {}
    out = ["## Results by slice (95% CIs: exact binomial for 0/1 per-item metrics, BCa bootstrap otherwise)", ""]
    if not metric or not slices:
        return out + [f"Per-slice results: {_MISSING}.", ""]
    named = metric_names(r.get("name", "") for r in gate.get("rules") or [])
    side = _side_metrics(ev, metric, slices, named)
    worst = _get(ev, "worst_slice", "slice") or min(
        slices, key=lambda k: _get(slices, k, metric, "mean") if _isnum(_get(slices, k, metric, "mean")) else math.inf)
    out += [f"| slice | n | {metric} mean [CI low, CI high] | " + " | ".join(side) + " |",
            "|---|---|---|" + "---|" * len(side)]
    for name in sorted(slices):
        s = slices[name]
        flag = (" **(worst)**" if name == worst else "") + (" (too small)" if s.get("too_small") else "")
        out.append(f"| {name}{flag} | {_n(s)} | {_ci(s.get(metric))} | "
                   + " | ".join(_f(_get(s, k, "mean")) for k in side) + " |")
    overall = ev.get("overall") or {}
    if metric in overall:
        out.append(f"| overall | {overall[metric].get('n', '-')} | {_ci(overall[metric])} | "
                   + " | ".join(_f(_get(overall, k, "mean")) for k in side) + " |")
    out += ["", f"Worst slice: **{worst}** ({metric} {_f(_get(slices, worst, metric, 'mean'))})."]
    folded = [k for k in dict.fromkeys(k for s in slices.values() for k, v in s.items() if isinstance(v, dict))
              if k not in side and k != metric]
    if folded:
        out += ["", "Also per slice in `eval.json`: " + ", ".join(f"`{k}`" for k in folded) + "."]
    return out + [""]


def _quantile_line(q: dict | None, signed: bool = False) -> str:
    if not q:
        return _MISSING
    return ", ".join(f"{k} {_f(q[k], signed)}" for k in _QUANTILES if k in q)


def _tails(ev: dict) -> list[str]:
    out = ["## Tails", "", f"Per-example NLL (nats/token): {_quantile_line(ev.get('nll_per_token'))}.", ""]
    by_slice = ev.get("nll_by_slice") or {}
    if by_slice:
        out += ["| slice | " + " | ".join(_QUANTILES) + " |", "|---|" + "---|" * len(_QUANTILES)]
        out += [f"| {s} | " + " | ".join(_f(q.get(k)) for k in _QUANTILES) + " |" for s, q in sorted(by_slice.items())]
        out.append("")
    buckets = ev.get("length_buckets")
    if not buckets:
        return out + [f"Quality by prompt length: {_MISSING}.", ""]
    ref = _get(ev, "reference", "length_buckets") or []
    ref = ref if len(ref) == len(buckets) else []
    out += [f"Quality by prompt length ({ev.get('headline_metric') or 'headline metric'}):", "",
            "| prompt tokens | n | shipped |" + (" reference |" if ref else ""),
            "|---|---|---|" + ("---|" if ref else "")]
    for i, b in enumerate(buckets):
        hi = b.get("max_tokens") if b.get("max_tokens") is not None else "+"
        out.append(f"| {b.get('min_tokens')}-{hi} | {b.get('n')} | {_f(b.get('mean'))} |"
                   + (f" {_f(ref[i].get('mean'))} |" if ref else ""))
    return out + [""]


def _damage_metric(d: dict, head: str | None) -> str | None:
    """The metric the per-slice damage rows compare (`<metric>_shipped/_reference/_drop`): the
    headline; a report whose rows name another single metric gets that one."""
    rows = [v for v in (d.get("slices") or {}).values() if isinstance(v, dict)]
    if head and any(f"{head}_shipped" in r for r in rows):
        return head
    found = {k[:-len("_shipped")] for r in rows for k in r if k.endswith("_shipped")}
    return found.pop() if len(found) == 1 else None


def _flip_line(d: dict) -> str:
    over = d.get("correctness_metrics")
    if over is not None and d.get("flip_rate") is None:
        return "- flip rate: none (the suite declares no correctness metric)"
    # correctness_pairs: item-metric pairs over the suite's correctness metrics; older reports
    # counted item-fields (field_pairs)
    pairs = (f" of {d['correctness_pairs']} item-metric pairs" if "correctness_pairs" in d else
             f" of {d['field_pairs']} item-fields" if "field_pairs" in d else "")
    return (f"- flip rate (right under reference, wrong as shipped{', over ' + ', '.join(over) if over else ''}): "
            f"{_f(d.get('flip_rate'))}{pairs}; reverse flips: {_f(d.get('unflip_rate'))}")


def _damage(ev: dict) -> list[str]:
    d = ev.get("damage")
    out = ["## Quantization damage", ""]
    if not d:
        return out + [f"Shipped vs reference precision: {_MISSING}.", ""]
    out += [f"Reference: {d.get('reference', 'unnamed')}; same prompts, same decoding.", "",
            f"- delta NLL per example (shipped - reference, nats/token): "
            f"{_quantile_line(d.get('delta_nll_per_token'), signed=True)}",
            _flip_line(d),
            f"- identical outputs (fraction of items): {_f(d.get('identical_outputs'))}; largest slice drop: "
            f"{_f(d.get('worst_slice_drop'), signed=True)}", ""]
    slices = d.get("slices") or {}
    metric = _damage_metric(d, ev.get("headline_metric"))
    if slices:
        col = f"{metric} shipped" if metric else "shipped"
        out += [f"| slice | n | {col} | reference | drop | mean delta NLL |", "|---|---|---|---|---|---|"]
        out += [f"| {s} | {v.get('n', '-')} | {_f(v.get(f'{metric}_shipped'))} "
                f"| {_f(v.get(f'{metric}_reference'))} | {_f(v.get(f'{metric}_drop'), True)} "
                f"| {_f(v.get('delta_nll_mean'), True)} |" for s, v in sorted(slices.items())]
        out.append("")
    return out


def _serve(m: Manifest, release: dict | None) -> list[str]:
    # The operator supplies the registry URL and the public key unless the release names them.
    remote = _get(release, "remote") or "<registry-url>"
    method = _get(release, "method") or "key"
    check = {"key": f" --public-key {_get(release, 'public_key') or '<release-public-key.pem>'} --require-signature",
             "sigstore": " --signer-identity <identity> --signer-issuer <oidc-issuer> --require-signature",
             "none": ""}.get(method, "")
    i = m.inference
    return ["## How to serve", "", "```bash",
            f"python -m serving --release {m.bundle_digest} --remote {remote}{check}",
            "```", "", "The server verifies every file against the manifest and replays the golden prompts before "
            "it answers.", f"Inference defaults: context {i.max_context_tokens} tokens, max new tokens "
            f"{i.max_new_tokens}, temperature {i.temperature}, top_p {i.top_p}, stop token ids "
            f"{list(m.tokenizer.stop_token_ids)}.", "", *_system_prompt(m)]


def _served(replay: dict | None) -> list[str]:
    """The release-time replay: the evaluation's answers asked of the served bundle under load."""
    if not replay:
        return ["## Served under load", "", "Not replayed at release time; `python -m serving.replay --serve "
                "<release dir>` checks it.", ""]
    firsts = [f"`{i['id']}` at token {i['first_difference']}" for i in replay.get("per_item") or []
              if not i.get("identical")][:10]
    differ = (f"; **{replay['different']} did not** (released with release.replay.required false; first "
              f"differences: {', '.join(firsts)})" if replay["different"] else "")
    return ["## Served under load", "", f"Before signing, this bundle was served by `python -m serving` and sent "
            f"all {replay['items']} evaluated items, {replay['concurrency']} at a time, through the `openai` client: "
            f"{replay['identical']} of {replay['items']} answers came back token for token as evaluated{differ}. "
            f"`replay.json` in the release has every item; measured {replay.get('measured_at')} in "
            f"{replay.get('wall_s')} s, 1-minute load average {(replay.get('load_avg_before') or ['?'])[0]} before "
            f"and {(replay.get('load_avg_after') or ['?'])[0]} after on {replay.get('cpus')} cores.", ""]


def _platform(ev: dict, replay: dict | None) -> list[str]:
    """Where the golden outputs hold: the platform of the evaluation, and of the release replay."""
    evaluated = ev.get("platform")
    if not evaluated:
        return ["## Platform", "", "Not recorded (an evaluation made before platforms were): the golden outputs "
                "hold on the machine class that evaluated it, which this release does not name.", ""]
    lines = ["## Platform", "", "Kernels differ by machine (docs/platforms.md), so the evaluated outputs are "
             "promised on the platform class that produced them. Evaluated on: "
             f"{evaluated['description']}.", ""]
    served = (replay or {}).get("platform")
    if served:
        same = served.get("platform_id") == evaluated.get("platform_id")
        lines += [f"Replayed at release time on: {served['description']}" + (" (the same platform class)." if same
                  else "."), ""]
    lines += ["A release is attested on another platform only by replaying every evaluated item there "
              "(`python -m pipeline.release attest`); each attestation is a signed in-toto statement kept beside "
              "the release, checked by `python -m serving` at start-up and listed on `/v1/models`.", ""]
    return lines


def _system_prompt(m: Manifest) -> list[str]:
    text = m.tokenizer.system_prompt
    if text is None:
        return ["System prompt: none pinned. The training records carried no single system prompt, so chat "
                "requests are rendered as sent, and one without a system message gets the chat template's own "
                "default system prompt, if the template has one.", ""]
    # Fenced, so a prompt with markdown or backticks is shown verbatim.
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall("`+", text)), default=0))
    return ["System prompt (pinned in the bundle; every training record opened with it): the server puts it in "
            "front of every chat request that brings no system message. A request with its own system message "
            "is served as sent, with a prompt the adapter was not trained on.", "", f"{fence}text", text, fence, ""]


def _provenance(m: Manifest, datasets_digest: str) -> list[str]:
    p = m.provenance
    rows = [("bundle", m.bundle_digest), ("base lock (16-bit files)", m.base.source_sha256),
            *((f"base source {k}", v) for k, v in sorted(m.base.source.items())),
            ("shipped base files", shipped_base_digest(m)), ("adapter files", files_digest(m.adapter.files)),
            ("adapter trained on base", m.adapter.base_digest), ("tokenizer files", files_digest(m.tokenizer.files)),
            ("chat template", m.tokenizer.chat_template_sha256), ("curated data", p.curated_data_digest),
            *((("curated data (card metadata)", datasets_digest),) if datasets_digest != p.curated_data_digest else ()),
            ("train params", p.params_digest), ("seed", p.seed), ("optimizer", p.optimizer),
            ("hardware", p.hardware), *((f"{k} version", v) for k, v in sorted(p.versions.items())),
            ("built from git commit", m.built.git_commit or "unknown")]
    return ["## Provenance", "", "| what | value |", "|---|---|",
            *(f"| {k} | `{v}` |" for k, v in rows), ""]


def _release(release: dict | None) -> list[str]:
    if not release:
        return []
    return ["## Release", "", *(f"- {k.replace('_', ' ').capitalize()}: `{v}`" for k, v in sorted(release.items())
                                if v is not None and not isinstance(v, (dict, list))), ""]


def render_card(manifest: Manifest, eval_report: dict, gate_report: dict, *, base_model: str | None,
                license: str, datasets_digest: str | None = None, language: list[str] | None = None,
                model_name: str | None = None, release: dict | None = None, replay: dict | None = None,
                configurations: list[str] | None = None) -> str:
    """The release's README.md: YAML front matter (HF model-card metadata) and a markdown body."""
    passed = _check(manifest, eval_report, gate_report)
    datasets_digest = datasets_digest or manifest.provenance.curated_data_digest
    name = model_name or f"tailgate-{manifest.bundle_digest[:12]}"
    body = [f"# {name}", "", *_summary(manifest, eval_report, base_model), *_gate(gate_report, passed),
            *comparison_lines(gate_report),
            *_quantization(manifest), *_results(eval_report, gate_report), *_tails(eval_report), *_damage(eval_report),
            *_serve(manifest, release), *_served(replay), *(configurations or []),
            *_platform(eval_report, replay), *_provenance(manifest, datasets_digest), *_release(release)]
    data = card_data(manifest, eval_report, gate_report, passed, base_model, license, datasets_digest,
                      language, name, replay)
    text = (f"---\n{data.to_yaml(original_order=META_ORDER)}\n---\n\n"
            + "\n".join(body).rstrip("\n") + "\n")
    return str(check_card_metadata(text))
