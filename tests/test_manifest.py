"""Manifests name repository files relative to the root, so they stay true in another clone."""

import json
import time

from glue.core.manifest import write_manifest
from glue.core.paths import ROOT


def test_paths_inside_the_repository_are_relative(tmp_path):
    outside = tmp_path / "data.jsonl"
    outside.write_text("{}\n")
    target = write_manifest(tmp_path, "demo", {"config": ROOT / "templates" / "distill.yml", "data": outside},
                            {"config": str(ROOT / "templates" / "distill.yml"), "files": [str(ROOT / "README.md")],
                             "steps": 3}, {}, time.time())
    manifest = json.loads(target.read_text())
    assert manifest["inputs"]["config"]["path"] == "templates/distill.yml"
    assert manifest["inputs"]["config"]["sha256"] is not None
    assert manifest["inputs"]["data"]["path"] == str(outside)  # outside the repository: as given
    assert manifest["parameters"] == {"config": "templates/distill.yml", "files": ["README.md"], "steps": 3}
