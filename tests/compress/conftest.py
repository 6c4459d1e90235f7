"""Fixtures for the tests that need llm-compressor: run this folder with the compression
environment (`.venv-compress/bin/python -m pytest tests/compress`). The tiny base model is
built by the training environment's glue.tiny_model (it needs axolotl's chat template), in
a subprocess, once per session."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SFT_DIR = ROOT / "tests" / "fixtures" / "sft"
RECIPES = sorted((ROOT / "compression_recipes").glob("*.yaml"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "base_model"
    subprocess.run([str(ROOT / ".venv/bin/python"), "-m", "glue.tiny_model", "--out", str(out),
                    "--corpus", str(SFT_DIR / "train.jsonl")], cwd=ROOT, check=True, capture_output=True)
    return out


@pytest.fixture(scope="session")
def compressed(tiny_model, tmp_path_factory) -> dict:
    """Every recipe run once on the tiny model: {recipe name: (output folder, figures)}."""
    from glue.compress import compress

    root = tmp_path_factory.mktemp("compressed")
    outputs = {}
    for recipe in RECIPES:
        out = root / recipe.stem
        figures = compress(tiny_model, recipe, SFT_DIR / "train.jsonl", out, samples=16, max_seq_length=256)
        outputs[recipe.stem] = (out, figures)
    return outputs
