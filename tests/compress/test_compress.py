"""glue.compress.compress and the recipes in compression_recipes/, on the tiny model (CPU)."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import RECIPES, ROOT, SFT_DIR
from transformers import AutoModelForCausalLM

from glue.compress.compress import compress, cpu_safe_awq, load_recipe
from glue.core.io import UserError

QUANTIZED = {"w4a16_gptq", "w4a16_awq", "sparse_2of4_w4a16"}
PRUNED_2OF4 = {"sparse_2of4", "sparse_2of4_w4a16"}


def test_every_recipe_parses_with_llmcompressor():
    from llmcompressor.recipe import Recipe

    assert {r.stem for r in RECIPES} >= QUANTIZED | PRUNED_2OF4 | {"sparse_unstructured_50"}
    for recipe in RECIPES:
        calibration, _ = load_recipe(recipe)
        assert calibration["samples"] > 0 and calibration["max_seq_length"] > 0, recipe.name
        assert Recipe.create_instance(str(recipe)).modifiers, recipe.name


@pytest.mark.parametrize("mistake, message", [
    ("GPTQModifier:", "GPTQModifer:"),            # unknown modifier
    ("scheme: W4A16", "schem: W4A16"),            # misspelt modifier argument
    ("quantization_stage:", "quantisation_stag:"),  # misspelt stage: llm-compressor alone would skip it
    ("samples: 512", "samples: many"),
])
def test_bad_recipe_is_refused_before_any_work(tmp_path, tiny_base, mistake, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text((ROOT / "compression_recipes/w4a16_gptq.yaml").read_text().replace(mistake, message))
    out = tmp_path / "out"
    with pytest.raises(UserError, match="bad.yaml"):
        compress(tiny_base, recipe, SFT_DIR / "train.jsonl", out)
    assert not out.exists()


def test_cli_reports_a_bad_recipe_in_one_line(tmp_path, tiny_base):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("quantization_stage:\n  quantization_modifiers:\n    NoSuchModifier: {}\n")
    result = subprocess.run([sys.executable, "-m", "glue.compress.compress", "--model", str(tiny_base), "--recipe",
                             str(recipe), "--data", str(SFT_DIR / "train.jsonl"), "--out", str(tmp_path / "o")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert "error: " in result.stderr and "NoSuchModifier" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("cuda", [False, True], ids=["no-cuda", "cuda"])
def test_awq_patch_only_without_cuda_and_restored(monkeypatch, cuda):
    """Both branches on any host: torch.cuda.is_available is set to what each case names."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    original = IntermediatesCache.pin_memory
    with cpu_safe_awq() as patched:
        assert patched is (not cuda)
        if cuda:  # pinning works with an accelerator: llm-compressor's own method is kept
            assert IntermediatesCache.pin_memory is original
        else:
            assert IntermediatesCache.pin_memory is not original
            IntermediatesCache.pin_memory(None, 0)  # a no-op: no accelerator is touched
    assert IntermediatesCache.pin_memory is original


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU hosts only: with CUDA, pinning memory works and AWQ "
                    "runs without cpu_safe_awq (which then does nothing)")
def test_awq_fails_on_cpu_without_the_patch(tiny_base):
    """Why cpu_safe_awq exists. When this starts passing oneshot (upstream fixed), drop the patch."""
    from llmcompressor import oneshot
    from transformers import AutoTokenizer

    from glue.compress.compress import calibration_dataset
    from glue.core.records import render_records

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    dataset = calibration_dataset(render_records(SFT_DIR / "train.jsonl", tokenizer, 4, 0), tokenizer, 128)
    model = AutoModelForCausalLM.from_pretrained(tiny_base)
    with pytest.raises(RuntimeError, match="accelerator"):
        oneshot(model=model, tokenizer=tokenizer, recipe=str(ROOT / "compression_recipes/w4a16_awq.yaml"),
                dataset=dataset, num_calibration_samples=4, max_seq_length=128, pipeline="sequential")


@pytest.mark.slow
def test_every_recipe_compresses_and_reloads(compressed, tiny_base):
    reference = json.loads((tiny_base / "config.json").read_text())
    prompt = torch.tensor([[reference["bos_token_id"], 5, 6, 7]])
    for name, (out, figures) in compressed.items():
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["parameters"]["recipe"] == name
        assert manifest["figures"]["calibration_samples"] == 16
        model = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
        generated = model.generate(prompt, max_new_tokens=4, do_sample=False)
        assert generated.shape[1] > prompt.shape[1], name
        if name in QUANTIZED:
            assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == "pack-quantized"
            assert figures["bits_per_parameter"] < compressed["sparse_2of4"][1]["bits_per_parameter"], name
        if name in PRUNED_2OF4:
            assert figures["groups_2of4"] == 1.0, name  # the 2:4 pattern survives (no GPTQ after SparseGPT)
        if name.startswith("sparse"):
            assert figures["linear_sparsity"] >= 0.5, name
        # cpu_safe_awq wraps every recipe's oneshot: patched exactly when this host has no CUDA
        assert manifest["parameters"]["awq_cpu_patch"] is (not torch.cuda.is_available()), name


@pytest.mark.slow
def test_refuses_compressed_input_and_existing_output(compressed, tiny_base, tmp_path):
    gptq, _ = compressed["w4a16_gptq"]
    pruned, _ = compressed["sparse_2of4"]
    recipe = ROOT / "compression_recipes/w4a16_gptq.yaml"
    for already in (gptq, pruned):
        with pytest.raises(UserError, match="already"):
            compress(already, recipe, SFT_DIR / "train.jsonl", tmp_path / "again")
        assert not (tmp_path / "again").exists()
    before = (gptq / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="already exists"):
        compress(tiny_base, recipe, SFT_DIR / "train.jsonl", gptq)
    assert (gptq / "model.safetensors").read_bytes() == before
