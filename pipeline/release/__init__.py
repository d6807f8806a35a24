"""The release stage: a bundle that passed the gate becomes a signed release in a DVC remote,
found by its bundle digest; `open_release` is the one way back from a release to a bundle."""

from pipeline.release.open import OpenedRelease, open_release
from pipeline.release.record import ReleaseError, ReleasePointer, ReleaseRecord, is_release_dir
from pipeline.release.registry import Registry

__all__ = ["OpenedRelease", "Registry", "ReleaseError", "ReleasePointer", "ReleaseRecord", "is_release_dir",
           "open_release"]
