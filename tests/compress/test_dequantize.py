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


@pytest.mark.slow
def test_recovery_lora_trains_on_the_dense_copy_and_merges(compressed, tmp_path):
    """The tiny 2E path as `make dequantize train-2e merge-2e` runs it: the rendered 2E config,
    pointed at a dense copy of the W4A16 GPTQ model, trains with Axolotl and merges behind the guard."""
    import subprocess

    import yaml
    from conftest import ROOT, SFT_DIR

    base = tmp_path / "2e_recovery_base"
    dequantize(compressed["w4a16_gptq"][0], base)
    config = yaml.safe_load((ROOT / "axolotl_configs/tiny/2e_recovery.yml").read_text())
    config.update(base_model=str(base), output_dir=str(tmp_path / "2e_recovery"),
                  dataset_prepared_path=str(tmp_path / "prepared"))
    config["datasets"][0]["path"] = str(SFT_DIR / "train.jsonl")
    config["test_datasets"][0]["path"] = str(SFT_DIR / "val.jsonl")
    path = tmp_path / "2e_recovery.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))

    for target in ("train", "merge"):
        result = subprocess.run(["make", "--no-print-directory", target, f"CONFIG={path}", "PROFILE=tiny"],
                                cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    adapter = json.loads((tmp_path / "2e_recovery" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base)
    merged = tmp_path / "2e_recovery" / "merged"
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    figures = json.loads((merged / "manifest.json").read_text())["figures"]
    assert figures["failures"] == [] and figures["relative_diff"] <= 1e-5
