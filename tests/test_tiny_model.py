"""The tiny base model's build: digits stay single tokens, and a second identical build is a
copy from the per-machine cache (steps=0 here: the pretraining itself is `make tiny-model`'s,
measured in the demo)."""

import json

from transformers import AutoTokenizer

from glue.train.tiny_model import build_tiny_model
from tests.conftest import SFT_DIR


def test_digits_are_single_tokens_and_a_second_build_is_a_cache_copy(tmp_path, capsys):
    cache = tmp_path / "cache"
    first = build_tiny_model(tmp_path / "a", SFT_DIR / "train.jsonl", steps=0, cache=cache)
    assert "copied from the cache" not in capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "a")
    pieces = tokenizer.tokenize("What is 47 + 385?")
    assert [p for p in pieces if any(c.isdigit() for c in p)] == ["4", "7", "3", "8", "5"]

    second = build_tiny_model(tmp_path / "b", SFT_DIR / "train.jsonl", steps=0, cache=cache)
    assert "copied from the cache" in capsys.readouterr().out and second == first
    assert (tmp_path / "b" / "model.safetensors").read_bytes() == (tmp_path / "a" / "model.safetensors").read_bytes()
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["parameters"]["steps"] == 0
