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
    data = os.urandom(3 << 20)  # more than one 1 MiB read block
    weights.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_path(weights) == expected and cache == ["model.safetensors"]
    # unchanged (same path, inode, size, mtime): the second answer comes from the cache
    assert sha256_path(weights) == expected and cache == ["model.safetensors"]
    assert io.digest_cache_path().is_file()


def test_the_cached_digest_is_what_is_returned(cache, tmp_path):
    """Proof that an unchanged file is not read again: a digest planted in the cache under
    the file's key comes back as is."""
    import sqlite3

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w" * 64)
    sha256_path(weights)
    with sqlite3.connect(io.digest_cache_path()) as db:
        db.execute("UPDATE digest SET sha256 = 'planted' WHERE path = ?", (str(weights.resolve()),))
    db.close()
    assert sha256_path(weights) == "planted" and cache == ["model.safetensors"]


def test_small_files_are_hashed_every_time(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(io, "DIGEST_CACHE_MIN_BYTES", 100)
    small = tmp_path / "config.json"
    small.write_bytes(b"{}" * 10)
    assert sha256_path(small) == sha256_path(small) == hashlib.sha256(b"{}" * 10).hexdigest()
    assert cache == ["config.json", "config.json"]
    assert not io.digest_cache_path().exists()


def test_a_file_of_another_size_is_hashed_again(cache, tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 100)
    mtime_ns = weights.stat().st_mtime_ns
    assert sha256_path(weights) == hashlib.sha256(b"a" * 100).hexdigest()
    weights.write_bytes(b"a" * 101)
    os.utime(weights, ns=(mtime_ns, mtime_ns))  # same mtime: the size tells
    assert sha256_path(weights) == hashlib.sha256(b"a" * 101).hexdigest()
    assert cache == ["model.safetensors", "model.safetensors"]


def test_a_rewritten_file_is_hashed_again(cache, tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 100)
    assert sha256_path(weights) == hashlib.sha256(b"a" * 100).hexdigest()
    weights.write_bytes(b"b" * 100)  # same size: the new mtime tells
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert sha256_path(weights) == hashlib.sha256(b"b" * 100).hexdigest()
    assert sha256_path(weights) == hashlib.sha256(b"b" * 100).hexdigest()  # and cached again
    assert cache == ["model.safetensors", "model.safetensors"]


def test_folder_digest_depends_on_names_and_contents(cache, tmp_path):
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"w")

    def expected(files):  # the documented recipe: relative names and file digests, sorted
        lines = "".join(f"{name}\0{hashlib.sha256(data).hexdigest()}\n" for name, data in sorted(files.items()))
        return hashlib.sha256(lines.encode()).hexdigest()

    first = sha256_path(model)
    assert first == expected({"config.json": b"{}", "sub/weights.bin": b"w"})
    assert sha256_path(model) == first and sorted(cache) == ["config.json", "weights.bin"]
    (model / "sub" / "weights.bin").rename(model / "sub" / "other.bin")
    renamed = sha256_path(model)
    assert renamed == expected({"config.json": b"{}", "sub/other.bin": b"w"}) != first


def test_unwritable_cache_still_gives_the_digest(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    monkeypatch.setattr(io, "DIGEST_CACHE_MIN_BYTES", 0)
    weights = tmp_path / "w.bin"
    weights.write_bytes(b"x")
    assert sha256_path(weights) == hashlib.sha256(b"x").hexdigest()
