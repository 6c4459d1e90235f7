"""Package an artefact (a checkpoint folder or a GGUF file) as a zstd-compressed tar with a
SHA-256 checksum and a manifest, and unpack such a package after verifying the checksum.

`pack` writes `<out>/<name>.tar.zst`, `<out>/<name>.tar.zst.sha256` (the `sha256sum -c`
format) and `<out>/manifest.json` with the measured compression ratio. Quantized weights are
close to incompressible, so expect a ratio near 1: the manifest says what it was.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tarfile
import tempfile
import time
from pathlib import Path

from glue.core.checkpoints import disk_bytes
from glue.core.io import UserError, atomic_path, require_file, run_cli, sha256_path
from glue.core.manifest import write_manifest

SUFFIX = ".tar.zst"


def pack(artefact: Path, out: Path, level: int = 10, overwrite: bool = False) -> dict:
    """Archive `artefact` into the folder `out`; returns the manifest's figures."""
    import zstandard

    started = time.time()
    artefact, out = Path(artefact), Path(out)
    if not artefact.exists():
        raise UserError(f"artefact not found: {artefact} (run `make compress` or `make gguf` first)")
    if not 1 <= level <= 22:
        raise UserError(f"zstd level must be 1..22, got {level}")
    name = artefact.name
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        archive = tmp / f"{name}{SUFFIX}"
        # threads=-1: one zstd worker per core; write_checksum adds zstd's own frame checksum.
        compressor = zstandard.ZstdCompressor(level=level, threads=-1, write_checksum=True)
        with archive.open("wb") as fh, compressor.stream_writer(fh) as stream:
            with tarfile.open(fileobj=stream, mode="w|") as tar:
                tar.add(artefact, arcname=name)
        digest = sha256_path(archive)
        (tmp / f"{archive.name}.sha256").write_text(f"{digest}  {archive.name}\n")
        figures = {
            "artefact_bytes": disk_bytes(artefact),
            "archive_bytes": archive.stat().st_size,
            "sha256": digest,
        }
        figures["zstd_ratio"] = round(figures["artefact_bytes"] / figures["archive_bytes"], 4)
        write_manifest(tmp, "package", {"artefact": artefact}, {"zstd_level": level, "archive": archive.name},
                       figures, started)
    return figures


def verify(archive: Path) -> str:
    """Check `archive` against its `.sha256` file; returns the digest."""
    archive = require_file(archive, "archive", "pass the .tar.zst written by `make package`")
    checksum_file = require_file(archive.with_name(archive.name + ".sha256"), "checksum file",
                                 "it is written beside the archive by `make package`")
    try:
        expected = checksum_file.read_text().split()[0]
    except IndexError:
        raise UserError(f"{checksum_file}: empty checksum file") from None
    digest = hashlib.sha256()
    with archive.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise UserError(f"{archive}: SHA-256 mismatch (expected {expected[:16]}..., got "
                        f"{digest.hexdigest()[:16]}...): the archive is corrupted or was changed; "
                        "copy it again or re-run `make package`")
    return expected


def unpack(archive: Path, dest: Path, overwrite: bool = False) -> Path:
    """Verify `archive`, then extract it into the folder `dest`; returns the unpacked artefact."""
    import zstandard

    archive = Path(archive)
    verify(archive)
    name = archive.name[: -len(SUFFIX)] if archive.name.endswith(SUFFIX) else archive.stem
    target = Path(dest) / name
    with atomic_path(target, overwrite=overwrite) as tmp, \
            tempfile.TemporaryDirectory(prefix=f".{name}.", suffix=".unpack", dir=target.parent) as staging:
        try:
            with archive.open("rb") as fh, zstandard.ZstdDecompressor().stream_reader(fh) as stream:
                with tarfile.open(fileobj=stream, mode="r|") as tar:
                    tar.extractall(staging, filter="data")  # refuses absolute paths and links out of staging
        except (zstandard.ZstdError, tarfile.TarError, OSError) as exc:
            raise UserError(f"{archive}: cannot be unpacked ({exc}); nothing was written") from None
        inner = Path(staging) / name
        if not inner.exists():
            raise UserError(f"{archive}: holds no top-level entry named {name!r}; nothing was written")
        inner.rename(tmp)
    return target


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.compress.package", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="archive an artefact folder or file")
    p.add_argument("artefact", type=Path, help="checkpoint folder or GGUF file")
    p.add_argument("--out", type=Path, required=True, help="folder to write the archive, checksum and manifest to")
    p.add_argument("--level", type=int, default=10, help="zstd level 1..22 (higher: slower, a little smaller)")
    p.add_argument("--overwrite", action="store_true")
    u = sub.add_parser("unpack", help="verify the checksum and extract")
    u.add_argument("archive", type=Path, help="a .tar.zst written by `pack` (its .sha256 beside it)")
    u.add_argument("--dest", type=Path, required=True, help="folder to extract into")
    u.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "pack":
        figures = pack(args.artefact, args.out, args.level, args.overwrite)
        print(f"packaged {args.artefact} -> {args.out}: {figures['artefact_bytes']:,} -> "
              f"{figures['archive_bytes']:,} bytes (zstd ratio {figures['zstd_ratio']})")
        print(json.dumps(figures))
    else:
        target = unpack(args.archive, args.dest, args.overwrite)
        print(f"checksum verified; unpacked -> {target}")


if __name__ == "__main__":
    run_cli(main)
