"""One manifest writer for every stage: what went in (with hashes), the parameters,
the figures measured, and how long it took. Stages call `write_manifest` last.

Paths inside the repository are recorded relative to its root, so a manifest still names the
right files in another clone or on the machine a release is copied to."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from glue.core.io import sha256_path, write_text_atomic
from glue.core.paths import ROOT, relative


def _relative_paths(value: Any) -> Any:
    """`value` with every absolute path inside the repository made relative to its root."""
    if isinstance(value, dict):
        return {k: _relative_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_relative_paths(v) for v in value]
    if isinstance(value, (str, Path)) and Path(value).is_absolute() and Path(value).resolve().is_relative_to(ROOT):
        return relative(value)
    return value


def write_manifest(
    folder: str | Path,
    stage: str,
    inputs: dict[str, str | Path],
    parameters: dict[str, Any],
    figures: dict[str, Any],
    started: float,
) -> Path:
    """Write `<folder>/manifest.json`. `started` is the time.time() the stage began."""
    manifest = {
        "stage": stage,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 2),
        "host": platform.node(),
        "inputs": {
            name: {"path": relative(path), "sha256": sha256_path(path) if Path(path).exists() else None}
            for name, path in inputs.items()
        },
        "parameters": _relative_paths(parameters),
        "figures": figures,
    }
    target = Path(folder) / "manifest.json"
    write_text_atomic(target, json.dumps(manifest, indent=2, default=str) + "\n")
    return target
