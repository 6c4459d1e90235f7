"""glue.core.io's hashing: folder digests, and the cross-process cache of large files' digests."""

import hashlib
import os

import pytest

from glue.core import io
from glue.core.io import sha256_path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private digest cache, with every file counted as large, and a count of real reads."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(io, "DIGEST_CACHE_MIN_BYTES", 0)
    reads = []
    real = io._file_sha256
    monkeypatch.setattr(io, "_file_sha256", lambda path: reads.append(path.name) or real(path))
    return reads


def test_file_digest_is_plain_sha256_and_read_once(cache, tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x01" * 4096)
    assert sha256_path(weights) == hashlib.sha256(b"\x01" * 4096).hexdigest()
    assert sha256_path(weights) == sha256_path(weights)
    assert cache == ["model.safetensors"]
    assert io.digest_cache_path().is_file()


def test_a_rewritten_file_is_hashed_again(cache, tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 100)
    before = sha256_path(weights)
    weights.write_bytes(b"b" * 100)  # same size: the new mtime tells
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert sha256_path(weights) == hashlib.sha256(b"b" * 100).hexdigest() != before
    assert cache == ["model.safetensors", "model.safetensors"]


def test_folder_digest_depends_on_names_and_contents(cache, tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"w")
    first = sha256_path(model)
    assert sha256_path(model) == first and sorted(cache) == ["config.json", "weights.bin"]
    (model / "sub" / "weights.bin").rename(model / "sub" / "other.bin")
    assert sha256_path(model) != first


def test_unwritable_cache_still_gives_the_digest(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(io, "DIGEST_CACHE_MIN_BYTES", 0)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x")
    assert sha256_path(weights) == hashlib.sha256(b"x").hexdigest()
