"""glue.compress.package: zstd archive + SHA-256 round trip, and refusal of damaged archives."""

import json

import pytest

from glue.compress.package import pack, unpack
from glue.core.io import UserError


@pytest.fixture
def artefact(tmp_path):
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 400 + b"\0" * 50_000)
    (folder / "sub" / "config.json").write_text('{"a": 1}')
    return folder


def test_round_trip_folder_and_file(artefact, tmp_path):
    figures = pack(artefact, tmp_path / "pkg")
    archive = tmp_path / "pkg" / "model.tar.zst"
    assert (tmp_path / "pkg" / "model.tar.zst.sha256").read_text().split() == [figures["sha256"], archive.name]
    assert figures["zstd_ratio"] == pytest.approx(figures["artefact_bytes"] / archive.stat().st_size, rel=1e-3)
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    assert manifest["figures"]["archive_bytes"] == archive.stat().st_size
    restored = unpack(archive, tmp_path / "restored")
    for file in artefact.rglob("*"):
        if file.is_file():
            assert (restored / file.relative_to(artefact)).read_bytes() == file.read_bytes()

    single = artefact / "model.safetensors"
    pack(single, tmp_path / "pkg_file")
    restored_file = unpack(tmp_path / "pkg_file" / "model.safetensors.tar.zst", tmp_path / "restored_file")
    assert restored_file.read_bytes() == single.read_bytes()


def test_corrupted_archive_is_refused_and_nothing_written(artefact, tmp_path):
    pack(artefact, tmp_path / "pkg")
    archive = tmp_path / "pkg" / "model.tar.zst"
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256 mismatch"):
        unpack(archive, tmp_path / "restored")
    assert not (tmp_path / "restored" / "model").exists()


def test_missing_checksum_and_existing_outputs_are_refused(artefact, tmp_path):
    pack(artefact, tmp_path / "pkg")
    with pytest.raises(UserError, match="already exists"):
        pack(artefact, tmp_path / "pkg")
    (tmp_path / "pkg" / "model.tar.zst.sha256").unlink()
    with pytest.raises(UserError, match="checksum file not found"):
        unpack(tmp_path / "pkg" / "model.tar.zst", tmp_path / "restored")
    with pytest.raises(UserError, match="artefact not found"):
        pack(tmp_path / "nothing", tmp_path / "pkg2")
