"""The `gate` section: the release rules a report must pass."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipeline.params.common import _Strict


class GateRule(_Strict):
    """One release rule over a number in the eval report, named by its path."""

    metric: str = Field(
        description="Dotted path into reports/eval.json: `overall.<metric>`, `slices.<slice>.<metric>`, "
        "`slices.*.<metric>` (every slice), `worst_slice.mean`, `nll_per_token.p99`, `damage.flip_rate`, "
        "`damage.slices.*.<headline>_drop`, ... A path that ends at a summary (mean and CI) reads `bound` from it. "
        "A path, slice or metric the report lacks fails the rule (fail closed); a wildcard matching nothing too.")
    min: float | None = Field(None, description="Floor: the value must be >= min.")
    max: float | None = Field(None, description="Ceiling: the value must be <= max.")
    bound: Literal["mean", "ci_low", "ci_high"] = Field(
        "mean", description="Which number of a summary is compared: the mean, or the lower/upper end of its 95% "
        "bootstrap CI (a floor on ci_low is the statistically honest floor on a 40-item slice).")
    note: str = Field("", description="Why the rule exists; shown beside its verdict.")

    @model_validator(mode="after")
    def _one_threshold(self) -> "GateRule":
        if (self.min is None) == (self.max is None):
            raise ValueError(f"gate rule {self.metric!r}: give exactly one of min or max")
        return self


class GateRegressionRule(_Strict):
    """A metric that may move against the baseline release by at most a budget."""

    metric: str = Field(description="Dotted path, as in GateRule (wildcards expand over the baseline's slices).")
    max_drop: float | None = Field(None, ge=0.0, description="Allowed fall (baseline - now) of a higher-is-better metric.")
    max_rise: float | None = Field(None, ge=0.0, description="Allowed rise (now - baseline) of a lower-is-better metric.")

    @model_validator(mode="after")
    def _one_budget(self) -> "GateRegressionRule":
        if (self.max_drop is None) == (self.max_rise is None):
            raise ValueError(f"regression rule {self.metric!r}: give exactly one of max_drop or max_rise")
        return self


class GateParams(_Strict):
    """Release rules. Every rule fails closed: a missing value is a failure."""

    allow_inexact_engine: bool = Field(False, description="Accept a report produced by an engine not known to be exact.")
    allow_limited_evaluation: bool = Field(
        False, description="Accept a report of a limited evaluation (evaluate.limit: a subset of each slice); the "
        "gate, the card and gate.md then say how much of the suite was run. Off: a partial run never releases.")
    rules: list[GateRule] = Field(default_factory=list, description="Floors and ceilings over report metrics.")
    baseline: str | None = Field(
        None, description="What the regression rules compare with. null (default): the latest release of the "
        "same suite (name and version; else the suite's latest at another version, on the items both share) in the "
        "registry release.remote names, skipping this bundle's own release; none found means no regression check, "
        "and gate.json and the card say so. `none`: the check is turned off. A 64-hex bundle digest: that release. "
        "A path: a release directory, or an eval.json (per-item scores from an eval_samples.jsonl or gate.json "
        "beside it). Its digest and sha256 are recorded in gate.json and on the card.")
    registry: str | None = Field(
        "releases", description="Where the default baseline is looked up: the release registry, as a DVC remote "
        "name from .dvc/config or a URL/path; keep it equal to release.remote (the gate reads only its own "
        "section). null: no registry, so no previous release.")
    registry_public_key: str | None = Field(
        ".tailgate/signing/release.pub", description="Public key a pulled baseline release's signature is checked "
        "with (release.signing.public_key); a missing file or null: its evidence hashes are still checked against "
        "the registry's record, the signature is not.")
    regression: list[GateRegressionRule] = Field(
        default_factory=list, description="Budgets against the baseline, per named metric. With per-item scores on "
        "both sides (every release made since releases carry them) `overall.<m>` and `slices.<s|*>.<m>` are "
        "compared item by item on the common items; other paths, and baselines without per-item scores, by means.")
    regression_alpha: float | None = Field(
        0.05, gt=0.0, lt=1.0, description="A paired worsening whose one-sided p-value (McNemar's exact test for 0/1 "
        "metrics, paired bootstrap otherwise), Holm-adjusted over every paired test of the gate, is below this "
        "fails its rule even within budget. null: budgets only.")
    regression_bootstrap_samples: int = Field(
        2000, ge=100, description="Resamples of the paired bootstrap for continuous metrics (its p-value is at "
        "least 1/(samples+1)).")
    regression_seed: int = Field(0, description="Seed of the paired bootstrap, so a rerun gives the same p-values.")
