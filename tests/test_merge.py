"""The merge guard refuses every quantized-base case with the file and the fix, and a real
merge is proved (logits match base+adapter) before it is put in place."""

import json
import shutil
from pathlib import Path

import pytest

from glue.core.io import UserError
from glue.train import merge as merge_mod


def make_adapter(base: Path, out: Path) -> Path:
    """A real PEFT LoRA adapter with non-zero weights, as training would leave it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def trained_adapter(tiny_base, tmp_path_factory):
    return make_adapter(tiny_base, tmp_path_factory.mktemp("adapter") / "run")


@pytest.fixture
def adapter(trained_adapter, tmp_path):
    """A fresh copy per test, so one test's merge never shows up in another's run folder."""
    return Path(shutil.copytree(trained_adapter, tmp_path / "run"))


@pytest.fixture(scope="module")
def bnb_base(tiny_base, tmp_path_factory):
    """A real pre-quantized bnb-4bit checkpoint (bitsandbytes has a CPU backend)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out = tmp_path_factory.mktemp("bnb") / "tiny-bnb-4bit"
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    AutoModelForCausalLM.from_pretrained(tiny_base, quantization_config=quant).save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_method"] == "bitsandbytes"
    return out


def refusal(config: Path, run: Path, **kwargs) -> str:
    with pytest.raises(UserError) as err:
        merge_mod.merge(config, run, **kwargs)
    assert not (run / "merged").exists()
    assert not list(run.parent.glob(".merged.*")) and not list(run.glob(".merged.*"))
    return str(err.value)


def test_refuses_a_base_whose_config_is_quantized(tmp_path, tiny_config, bnb_base, adapter):
    config = tiny_config(bnb_base, adapter)
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text())
    run = tmp_path / "bnb_run"
    run.mkdir()
    (run / "adapter_config.json").write_text(json.dumps({**adapter_cfg, "base_model_name_or_path": str(bnb_base)}))
    message = refusal(config, run)
    assert f"{bnb_base}/config.json: the base model is quantized (bitsandbytes)" in message
    assert "train on the full-precision base" in message


@pytest.mark.parametrize("name", ["unsloth/meta-llama-3.1-8b-instruct-unsloth-bnb-4bit",
                                  "TheBloke/Llama-2-7B-Chat-GPTQ", "hugging-quants/Meta-Llama-3.1-8B-Instruct-AWQ-INT4"])
def test_refuses_a_base_named_as_pre_quantized(tmp_path, tiny_config, adapter, name):
    config = tiny_config(name, adapter)
    line = next(i for i, l in enumerate(config.read_text().splitlines(), 1) if l.startswith("base_model:"))
    message = refusal(config, adapter)
    assert f"{config}:{line}: base_model `{name}` is a pre-quantized checkpoint" in message


@pytest.mark.parametrize("edit,what", [
    (lambda t: t.replace("adapter: lora", "adapter: qlora\nload_in_4bit: true"), "load_in_4bit, adapter: qlora"),
    (lambda t: t.replace("adapter: lora", "adapter: lora\nload_in_8bit: true"), "load_in_8bit"),
])
def test_refuses_a_quantized_training_config_without_opt_in(tmp_path, tiny_config, tiny_base, adapter, edit, what):
    config = tiny_config(tiny_base, adapter, edit)
    message = refusal(config, adapter)
    assert f"trained with {what}" in message and "ALLOW_QLORA_MERGE=1" in message
    assert f"{config}:" in message


def test_refuses_an_adapter_trained_on_another_base(tmp_path, tiny_config, tiny_base, adapter):
    other = tmp_path / "other_base"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    message = refusal(tiny_config(other, adapter), adapter)
    assert f"{adapter}/adapter_config.json: the adapter was trained on `{tiny_base}`" in message


def test_refuses_a_run_with_no_adapter(tmp_path, tiny_config, tiny_base):
    run = tmp_path / "empty_run"
    run.mkdir()
    message = refusal(tiny_config(tiny_base, run), run)
    assert "no trained adapter (adapter_config.json) here" in message


def test_merge_is_proved_and_a_failed_proof_leaves_nothing(tmp_path, tiny_config, tiny_base, adapter):
    config = tiny_config(tiny_base, adapter)
    message = refusal(config, adapter, tolerance=0.0)  # no merge is bit-exact: the proof must fail
    assert "merge check failed, nothing was put in place: logits differ" in message

    merged = merge_mod.merge(config, adapter)
    manifest = json.loads((merged / "manifest.json").read_text())
    figures = manifest["figures"]
    assert figures["relative_diff"] <= 1e-5 and figures["top1_agreement"] == 1.0
    assert figures["all_finite"] and not figures["quantization_config"] and figures["stored_dtypes"] == ["F32"]
    assert manifest["parameters"]["nf4_simulated"] is False
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())
    with pytest.raises(UserError, match="already exists: use it, or merge again with OVERWRITE=1"):
        merge_mod.merge(config, adapter)


def test_qlora_opt_in_merges_and_says_so(tmp_path, tiny_config, tiny_base, adapter):
    config = tiny_config(tiny_base, adapter,
                          lambda t: t.replace("adapter: lora", "adapter: qlora\nload_in_4bit: true"))
    merged = merge_mod.merge(config, adapter, allow_qlora_merge=True, overwrite=True)
    manifest = json.loads((merged / "manifest.json").read_text())
    assert manifest["parameters"]["nf4_simulated"] is True
    assert "NF4-simulated merge" in manifest["figures"]["warning"]
    # The simulated merge really departs from the full-precision model: that is why it is opt-in.
    assert manifest["figures"]["relative_diff"] > 1e-3
