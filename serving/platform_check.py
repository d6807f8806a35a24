"""Serving's platform check: is this machine one the release's answers are promised on?

Done after the engine is built and before the parity probe. The answers are promised on the
platform class that evaluated the release, and on every platform a verified attestation covers
(pipeline/release/attest.py). Anywhere else the server says so before the probe; the probe then
decides, and a refusal names both platforms, so an operator sees a platform difference, not a
mystery token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.platform import Platform, detect, differences


def engine_platform(engine: Any) -> Platform:
    """The platform the engine computes on (its 4-bit kernel read from the loaded model)."""
    model = getattr(engine, "model", None)
    if hasattr(engine, "platform_record"):  # a runtime of its own (llama.cpp) says what it computes on
        return Platform.from_record(engine.platform_record())
    if getattr(engine, "name", None) == "vllm" or model is None:
        return detect(kernel="vllm" if getattr(engine, "name", None) == "vllm" else "none")
    return detect(model)


@dataclass
class PlatformCheck:
    here: Platform
    evaluated: Platform | None
    attested: list = field(default_factory=list)  # verified Attestations
    problems: list[str] = field(default_factory=list)  # attestations that did not verify

    @property
    def coverage(self) -> str:
        """evaluated | attested | not_covered | unknown (the release names no platform)."""
        if self.evaluated is not None and self.evaluated.platform_id == self.here.platform_id:
            return "evaluated"
        if any(a.platform.platform_id == self.here.platform_id for a in self.attested):
            return "attested"
        return "unknown" if self.evaluated is None else "not_covered"

    @property
    def covered(self) -> bool:
        return self.coverage in ("evaluated", "attested")

    def differences(self) -> list[str]:
        return differences(self.evaluated, self.here) if self.evaluated is not None else []

    def message(self) -> str:
        """One line for the log and for a refusal: both platforms, and what differs."""
        evaluated = self.evaluated.describe() if self.evaluated else "not recorded"
        if self.coverage == "evaluated":
            return f"serving on the platform class the release was evaluated on: {self.here.describe()}"
        if self.coverage == "attested":
            return (f"serving on a platform the release is attested on: {self.here.describe()} "
                    f"(evaluated on {evaluated})")
        diff = "; ".join(self.differences()) or "unknown"
        return (f"serving on a platform the release was neither evaluated nor attested on; evaluated on "
                f"{evaluated}, serving on {self.here.describe()} (differs in: {diff}); attest it here with "
                "`python -m pipeline.release attest`")

    def as_dict(self) -> dict[str, Any]:
        return {"serving": self.here.as_record(), "evaluated": self.evaluated.as_record() if self.evaluated else None,
                "coverage": self.coverage, "differences": self.differences(),
                "attested": [a.summary() for a in self.attested], "attestation_problems": self.problems}


def check(engine: Any, evaluated_record: dict | None, release_root: str | Path | None, public_key: str | None,
          attestation_paths: list[str], registry_sources: dict[str, bytes] | None = None) -> PlatformCheck:
    """Compare this machine's platform with the release's, and read the attestations of the
    release (files under attestation_paths and those from its registry)."""
    from pipeline.release.attest import collect, local_sources

    here, evaluated = engine_platform(engine), Platform.from_record(evaluated_record)
    attested, problems = [], []
    if release_root is not None:
        from pipeline.files import read_json
        from pipeline.release.record import RECORD_NAME

        digest = read_json(Path(release_root) / RECORD_NAME)["bundle_digest"]
        sources = {**local_sources(attestation_paths, digest), **(registry_sources or {})}
        attested, problems = collect(sources, public_key, Path(release_root))
    return PlatformCheck(here, evaluated, attested, problems)
