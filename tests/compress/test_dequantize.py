"""2E's input: a dense copy of a compressed checkpoint that Axolotl can train on."""

import json

import pytest

from glue.compress.dequantize import dequantize
from glue.core.io import UserError


def test_dense_copy_matches_the_compressed_model(compressed, tmp_path):
    out = tmp_path / "dense"
    figures = dequantize(compressed["w4a16_gptq"][0], out)
    assert figures["max_abs_logit_diff"] <= 1e-4
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert json.loads((out / "manifest.json").read_text())["stage"] == "dequantize"


def test_refuses_a_checkpoint_that_is_not_compressed(tiny_base, tmp_path):
    with pytest.raises(UserError, match="is not a compressed checkpoint"):
        dequantize(tiny_base, tmp_path / "dense")
    assert not (tmp_path / "dense").exists()
