"""One manifest writer for every stage: what went in (with hashes), the parameters,
the figures measured, and how long it took. Stages call `write_manifest` last."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

from glue.core.io import sha256_path, write_text_atomic


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
            name: {"path": str(path), "sha256": sha256_path(path) if Path(path).exists() else None}
            for name, path in inputs.items()
        },
        "parameters": parameters,
        "figures": figures,
    }
    target = Path(folder) / "manifest.json"
    write_text_atomic(target, json.dumps(manifest, indent=2, default=str) + "\n")
    return target
