"""Serving refuses every tampered bundle at startup: exit code 2, a message naming the file,
and no weights built (a tripwire fails the test if an engine is constructed)."""

from __future__ import annotations

import pytest

from serving.__main__ import EXIT_BUNDLE_REFUSED, main
from tests.tamper import TAMPERS


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_tampered_bundle_is_refused_before_weights(case, bundle_copy, served, no_weights, capsys):
    named, phrase = TAMPERS[case](bundle_copy)
    code = main(["--allow-unreleased", "--bundle", str(bundle_copy), "--golden", str(served.golden_path), "--port", "1"])
    err = capsys.readouterr().err
    assert code == EXIT_BUNDLE_REFUSED, err
    assert f"bundle file {named!r}" in err and phrase in err, err


def test_pristine_copy_gets_past_verification(bundle_copy, served, no_weights):
    """The tripwire itself: an untampered copy reaches engine construction (and trips it)."""
    with pytest.raises(AssertionError, match="engine was built"):
        main(["--allow-unreleased", "--bundle", str(bundle_copy), "--golden", str(served.golden_path), "--port", "1"])
