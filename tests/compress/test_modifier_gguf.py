"""glue.modifiers.gguf_adapter on the tiny model: LoRA adapters made here with peft (random lora_B,
so they change the output), converted by llama.cpp's convert_lora_to_gguf.py and hot-swapped on
the f16, Q5_K_M and Q4_K_M files of `exported` (needs `make setup`: llama-cpp-python and the
converter in .venv-compress/src/llama.cpp)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import CONVERTER, ROOT, VAL

import glue.modifiers.gguf_adapter as gguf_adapter
from glue.compress.gguf import agreement, context_size, load_gguf, prompts_from
from glue.core.io import UserError

LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_adapter(base, out, seed):
    """A rank-8 LoRA on every linear layer of `base`, saved as Axolotl saves one. peft starts
    lora_B at zero (no change at all); random values, drawn from `seed` alone so that the figures
    are the same on every run, make the adapter move the logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=8, lora_alpha=16, target_modules=LINEAR, task_type="CAUSAL_LM"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if "lora_A" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) / weight.shape[1] ** 0.5)
            elif "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.05)
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory):
    root = tmp_path_factory.mktemp("modifiers")
    return {name: make_adapter(tiny_base, root / name / "adapter", seed) for name, seed in (("code", 1), ("math", 2))}


@pytest.fixture(scope="module")
def checked(tiny_base, adapters, exported, tmp_path_factory):
    out = tmp_path_factory.mktemp("modifier_gguf") / "gguf"
    return out, gguf_adapter.check(tiny_base, adapters, exported[0], VAL, out, CONVERTER, prompts=3, max_new_tokens=16)


@pytest.fixture(scope="module")
def reference(tiny_base, adapters):
    """transformers + peft on the check's prompts: (prompts, {adapter: continuations and logits})."""
    from transformers import AutoTokenizer

    prompts = prompts_from(VAL, AutoTokenizer.from_pretrained(tiny_base), 3)
    return prompts, gguf_adapter.transformers_reference(tiny_base, adapters, prompts, 16)


def test_adapters_agree_over_f16_and_act_over_quantized_bases(checked, exported):
    out, results = checked
    assert sorted(p.name for p in out.iterdir()) == ["check.json", "code.gguf", "manifest.json", "math.gguf", "report.md"]
    assert json.loads((out / "check.json").read_text()) == results
    assert json.loads((out / "manifest.json").read_text())["stage"] == "modifier_gguf"
    for name, r in results.items():
        assert (out / r["file"]).stat().st_size == r["bytes"] and r["rank"] == 8
        assert list(r["bases"]) == ["model-f16.gguf", "model-Q5_K_M.gguf", "model-Q4_K_M.gguf"]
        f16 = r["bases"]["model-f16.gguf"]
        assert f16["tokenizer_match"] == 1.0 and f16["top1_agreement"] >= 0.95, name
        assert f16["effect_error"] < 0.05, name
        # The adapter acts in llama.cpp: switched off, the same base agrees less with transformers
        # + adapter, so an adapter llama.cpp silently ignored would fail here.
        assert f16["top1_agreement_without_adapter"] < f16["top1_agreement"] - 0.2, name
        for file in ("model-Q5_K_M.gguf", "model-Q4_K_M.gguf"):
            # Over a quantized base the few positions' top-1 is too coarse to show it (the rounded
            # base already changes the tiny model's choices); the logits do: llama.cpp makes at
            # least half of transformers' change (an ignored adapter: effect error 1.0).
            f = r["bases"][file]
            assert f["tokenizer_match"] == 1.0 and f["top1_agreement"] is not None, (name, file)
            assert f["effect_error"] < 0.5, (name, file)
    report = (out / "report.md").read_text()
    assert "| code (" in report and "| model-Q4_K_M.gguf |" in report


def test_switching_adapters_on_one_base_matches_loading_each_alone(exported, checked, reference):
    """One base, both adapters switched in turn (the second one reuses no KV cache of the first),
    then off: each gives what a Llama built with that adapter alone (or none) gives."""
    from llama_cpp import Llama

    f16 = exported[0] / "model-f16.gguf"
    out, _ = checked
    prompts, ref = reference
    n_ctx = max(context_size(prompts, r["continuations"]) for r in ref.values())
    llm = load_gguf(f16, n_ctx, 2)
    handles = {name: gguf_adapter.load_adapter(llm, out / f"{name}.gguf") for name in ("code", "math")}
    for name in ("code", "math", None):
        gguf_adapter.use_adapter(llm, handles.get(name))
        continuations = ref[name or "code"]["continuations"]
        swapped = agreement(llm, prompts, continuations)
        alone = Llama(model_path=str(f16), lora_path=str(out / f"{name}.gguf") if name else None, n_ctx=n_ctx,
                      logits_all=True, n_threads=2, verbose=False)
        fresh = agreement(alone, prompts, continuations)
        assert swapped[0] == fresh[0], name
        for a, b in zip(swapped[1], fresh[1]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-4)


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_an_ignored_or_misscaled_adapter_fails_the_gate(exported, checked, reference, monkeypatch, scale):
    """llama.cpp loading the adapter but applying it at scale 0 (ignored) or 0.5: the top-1
    agreement alone may not notice; the effect error does."""
    out, _ = checked
    prompts, ref = reference
    original = gguf_adapter.use_adapter
    monkeypatch.setattr(gguf_adapter, "use_adapter", lambda llm, handle: original(llm, handle, scale=scale))
    files = {name: out / f"{name}.gguf" for name in ref}
    figures = gguf_adapter.check_on_base(exported[0] / "model-f16.gguf", files, prompts, ref, 2)
    # The logits respond to the adapter's scale almost linearly: scale 0.5 measures 0.5-0.7.
    assert all(f["effect_error"] == 1.0 if scale == 0 else f["effect_error"] > 0.4 for f in figures.values())
    results = {name: {"bases": {"model-f16.gguf": f}} for name, f in figures.items()}
    with pytest.raises(UserError, match=r"code over model-f16.gguf: llama.cpp changes the logits unlike transformers"):
        gguf_adapter.gate(results, {"f16": exported[0] / "model-f16.gguf"}, 0.95, 0.2)


def edit_json(path, **changes):
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("where, changes, message", [
    ("adapter", {"use_rslora": True}, r"adapter_config.json: use_rslora is set and llama.cpp's converter ignores it"),
    ("adapter", {"base_model_name_or_path": "meta-llama/Llama-3.1-8B-Instruct"},
     r"adapter_config.json: the adapter was trained on `meta-llama/Llama-3.1-8B-Instruct` but the base given is"),
    ("gguf", {"inputs": {"model": {"path": "work/tiny/2e_recovery/merged", "sha256": "0" * 64}}},
     r"manifest.json: these GGUF files were exported from work/tiny/2e_recovery/merged.*run `make gguf MODEL="),
])
def test_a_mismatch_is_refused_before_converting(tiny_base, adapters, exported, tmp_path, where, changes, message):
    adapter, gguf = shutil.copytree(adapters["code"], tmp_path / "adapter"), tmp_path / "gguf"
    gguf.mkdir()
    for file in exported[0].glob("*.json"):
        shutil.copy(file, gguf)
    (gguf / "model-f16.gguf").symlink_to(exported[0] / "model-f16.gguf")
    edit_json((adapter / "adapter_config.json") if where == "adapter" else (gguf / "manifest.json"), **changes)
    with pytest.raises(UserError, match=message):
        gguf_adapter.check(tiny_base, {"code": adapter}, gguf, VAL, tmp_path / "out", CONVERTER)
    assert not (tmp_path / "out").exists()


def test_adapter_names_come_from_folders_or_are_given():
    assert gguf_adapter.parse_adapters(["work/x/modifiers/code/adapter", "math=work/x/modifiers/math/adapter"]) == {
        "adapter": Path("work/x/modifiers/code/adapter"), "math": Path("work/x/modifiers/math/adapter")}
    with pytest.raises(UserError, match="adapter name.s. adapter given twice.*NAME=FOLDER"):
        gguf_adapter.parse_adapters(["a/code/adapter", "a/math/adapter"])


def test_cli_has_help():
    result = subprocess.run([sys.executable, "-m", "glue.modifiers.gguf_adapter", "--help"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and "--base-model" in result.stdout and "[NAME=]ADAPTER" in result.stdout
