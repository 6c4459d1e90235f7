"""Fixtures for the tests that need llm-compressor or llama.cpp: run this folder with the compression
environment (`.venv-compress/bin/python -m pytest tests/compress`). `tiny_base` comes from
tests/conftest.py."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SFT_DIR = ROOT / "tests" / "fixtures" / "sft"
RECIPES = sorted((ROOT / "compression_recipes").glob("*.yaml"))
CONVERTER = ROOT / ".venv-compress" / "src" / "llama.cpp"
VAL = SFT_DIR / "val.jsonl"


@pytest.fixture(scope="session")
def compressed(tiny_base, tmp_path_factory) -> dict:
    """Every recipe run once on the tiny model: {recipe name: (output folder, figures)}."""
    from glue.compress.compress import compress

    root = tmp_path_factory.mktemp("compressed")
    outputs = {}
    for recipe in RECIPES:
        out = root / recipe.stem
        figures = compress(tiny_base, recipe, SFT_DIR / "train.jsonl", out, samples=16, max_seq_length=256)
        outputs[recipe.stem] = (out, figures)
    return outputs


@pytest.fixture(scope="session")
def exported(tiny_base, tmp_path_factory) -> tuple[Path, dict]:
    """`make gguf` on the tiny model, once: (its folder of f16, Q5_K_M and Q4_K_M files, their figures)."""
    from glue.compress.gguf import export

    out = tmp_path_factory.mktemp("gguf") / "gguf"
    return out, export(tiny_base, out, ["Q5_K_M", "Q4_K_M"], VAL, CONVERTER, prompts=3, max_new_tokens=16)


@pytest.fixture
def stock_suite(tmp_path) -> Path:
    """tiny_1a.yml without the generated world's tasks (800 generations per model, the demo's),
    at the sizes these tests count: gsm8k 10 docs, mmlu 8, humaneval (not run without opt-in)."""
    import yaml

    suite = yaml.safe_load((ROOT / "eval_configs" / "suites" / "tiny_1a.yml").read_text())
    limits = {"tiny_gsm8k_cot_llama": 10, "tiny_mmlu_llama": 8}
    suite["tasks"] = [{**t, "limit": limits.get(t["task"], t.get("limit"))}
                      for t in suite["tasks"] if not t["task"].startswith("tiny_world")]
    path = tmp_path / "stock_suite.yml"
    path.write_text(yaml.safe_dump(suite))
    return path
