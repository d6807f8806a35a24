"""The one atomic writer (pipeline.files.atomic_open), the text/JSON writers built on it and the
directory variant (atomic_dir): all or nothing, fsynced data then rename then fsynced directory,
no temp file left behind."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from pipeline.files import atomic_dir, atomic_open, atomic_write_json, atomic_write_text


@pytest.fixture
def synced(monkeypatch):
    """Record what os.fsync and os.replace were called on, in order: ("fsync", inode) or ("replace", dst)."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def _only(path):
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("write", [atomic_write_text, atomic_write_json])
def test_file_then_rename_then_directory_are_synced(tmp_path, synced, write):
    path = tmp_path / "out" / "report.json"
    write(path, {"a": 1} if write is atomic_write_json else "hello\n")
    # the data is on disk before the name points at it, and the name is on disk after
    assert synced == [("fsync", path.stat().st_ino), ("replace", str(path)), ("fsync", path.parent.stat().st_ino)]
    assert _only(path) == ["report.json"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_json_writer_is_the_text_writer(tmp_path, synced):
    path = tmp_path / "r.json"
    atomic_write_json(path, {"b": [1, 2], "a": "é"})
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == {"a": "é", "b": [1, 2]} and text.endswith("\n") and "é" in text
    assert [kind for kind, _ in synced] == ["fsync", "replace", "fsync"]


def test_a_failure_while_writing_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "eval.json"
    atomic_write_text(path, "old\n")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_open(path) as f:
            f.write("half a rep" * 10_000)
            f.flush()
            [tmp] = [p for p in tmp_path.iterdir() if p.name != "eval.json"]
            assert tmp.stat().st_size == 100_000  # really mid-write: part of it is in the temp file
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old\n" and _only(path) == ["eval.json"]
    # the text writer too: a lone surrogate cannot be encoded, so the write itself fails
    with pytest.raises(UnicodeEncodeError):
        atomic_write_text(path, "new " * 50_000 + "\ud800")
    assert path.read_text() == "old\n" and _only(path) == ["eval.json"]


def test_a_failing_fsync_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "gate.json"
    atomic_write_json(path, {"passed": True})

    def disk_error(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", disk_error)
    with pytest.raises(OSError, match="Input/output"):
        atomic_write_json(path, {"passed": False})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"passed": True} and _only(path) == ["gate.json"]


def test_a_directory_that_cannot_be_synced_still_gets_the_file(tmp_path, monkeypatch):
    real = os.fsync

    def no_dir_sync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd)

    monkeypatch.setattr(os, "fsync", no_dir_sync)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert (tmp_path / "a.txt").read_text() == "x"


def test_binary_mode_and_nothing_but_write_modes(tmp_path, synced):
    path = tmp_path / "blob.bin"
    with atomic_open(path, "wb") as f:
        f.write(b"\x00\x01" * 1000)
    assert path.read_bytes() == b"\x00\x01" * 1000
    assert [kind for kind, _ in synced] == ["fsync", "replace", "fsync"]
    for mode in ("a", "r", "w+", "x"):
        with pytest.raises(ValueError, match="mode"):
            with atomic_open(path, mode):
                pass
    assert path.read_bytes() == b"\x00\x01" * 1000


def test_text_is_utf8_with_newlines_as_written(tmp_path):
    atomic_write_text(tmp_path / "t.md", "a\nb\r\nç\n")
    assert (tmp_path / "t.md").read_bytes() == "a\nb\r\nç\n".encode("utf-8")


def test_a_secret_is_never_readable_by_others(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace

    def replace(src, dst):  # the mode of the temp file at the moment it gets the name
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with atomic_open(tmp_path / "release.key", "wb", permissions=0o600) as f:
        assert stat.S_IMODE(os.fstat(f.fileno()).st_mode) == 0o600  # while half-written too
        f.write(b"secret")
    assert seen == [0o600] and stat.S_IMODE((tmp_path / "release.key").stat().st_mode) == 0o600


def test_a_directory_lands_with_every_file_synced_before_the_rename(tmp_path, synced):
    out = tmp_path / "bundle"
    with atomic_dir(out) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "a.bin").write_bytes(b"a" * 10)  # written the way torch/safetensors write: no fsync
        (tmp / "sub" / "b.json").write_text("{}")
    files = {(out / "a.bin").stat().st_ino, (out / "sub" / "b.json").stat().st_ino}
    dirs = {out.stat().st_ino, (out / "sub").stat().st_ino}
    rename = synced.index(("replace", str(out)))
    before = {ino for kind, ino in synced[:rename] if kind == "fsync"}
    assert files | dirs <= before  # data and entries on disk before the name points at them
    assert synced[rename + 1:] == [("fsync", tmp_path.stat().st_ino)]  # and the new name after
    assert _only(out) == ["bundle"]


def test_a_failed_directory_leaves_the_old_one(tmp_path):
    out = tmp_path / "bundle"
    with atomic_dir(out) as tmp:
        (tmp / "v1").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as tmp:
            (tmp / "v2").write_text("2")
            raise RuntimeError("crash half way")
    assert sorted(p.name for p in out.iterdir()) == ["v1"] and _only(out) == ["bundle"]
