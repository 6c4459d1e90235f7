"""Every rendered config passes Axolotl's own schema, and the mistakes Axolotl lets through
(unknown keys, missing files, GPU options on CPU, a finished run in the way) are caught
with the file, the line and what to do. Axolotl's own examples are judged as Axolotl judges
them: with the options of the plugins they list and the dataset model of their training type."""

import importlib.util
from pathlib import Path

import pytest
import torch

from glue.core.io import UserError
from glue.train import validate_config as vc

ROOT = Path(__file__).resolve().parent.parent
RENDERED = sorted((ROOT / "axolotl_configs").glob("*/*.yml"))


@pytest.mark.parametrize("path", RENDERED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_rendered_configs_pass_axolotl_validation(path):
    cfg = vc.validate(path)
    assert vc.unknown_keys(path, cfg) == [] and vc.schema_errors(path, cfg) == []


def _edited(tmp_path, old, new, source="axolotl_configs/tiny/1a_base_sft.yml"):
    text = (ROOT / source).read_text()
    assert old in text
    path = tmp_path / "cfg.yml"
    path.write_text(text.replace(old, new))
    return path


def test_misspelt_key_is_caught_with_line_and_suggestion(tmp_path):
    path = _edited(tmp_path, "learning_rate:", "learning_rat:")
    line = next(i for i, l in enumerate(path.read_text().splitlines(), 1) if l.startswith("learning_rat:"))
    with pytest.raises(UserError) as err:
        vc.validate(path)
    assert f"{path}:{line}: unknown key `learning_rat` (did you mean `learning_rate`?)" in str(err.value)


def test_misspelt_dataset_key_is_caught(tmp_path):
    path = _edited(tmp_path, "field_messages: messages\n    roles", "field_mesages: messages\n    roles")
    with pytest.raises(UserError, match=r"unknown key `datasets\.0\.field_mesages` \(did you mean `field_messages`"):
        vc.validate(path)


def test_schema_error_from_axolotl_names_the_key(tmp_path):
    path = _edited(tmp_path, "learning_rate:", "learning_rate: fast  #")  # the old value becomes a comment
    with pytest.raises(UserError, match=r"cfg\.yml:\d+: learning_rate: .*could not convert"):
        vc.validate(path)


def test_missing_config_file_says_how_to_get_one(tmp_path):
    with pytest.raises(UserError, match=r"config file not found: .*nope\.yml \(render one with `make render`"):
        vc.validate(tmp_path / "nope.yml")


def test_missing_dataset_and_base_model_are_named(tmp_path):
    """Independent of work/: the config names a base model and datasets under tmp_path and in
    tests/fixtures, missing or present as each case needs."""
    base = tmp_path / "tiny" / "base_model"
    fixtures = ROOT / "tests" / "fixtures" / "sft"

    def config(train: Path) -> Path:
        text = (ROOT / "axolotl_configs/tiny/1a_base_sft.yml").read_text()
        for old, new in (("base_model: work/tiny/base_model", f"base_model: {base}"),
                         ("path: work/tiny/data/train.jsonl", f"path: {train}"),
                         ("path: work/tiny/data/val.jsonl", f"path: {fixtures / 'val.jsonl'}")):
            assert old in text
            text = text.replace(old, new)
        path = tmp_path / "cfg.yml"
        path.write_text(text)
        return path

    path = config(fixtures / "missing.jsonl")
    with pytest.raises(UserError) as err:
        vc.validate(path, for_training=True)
    assert f"{path} is not valid (2 problem(s))" in str(err.value)
    assert f"datasets file not found: {fixtures / 'missing.jsonl'} (check the path)" in str(err.value)
    assert f"base_model folder not found: {base} (build it with `make tiny-model`)" in str(err.value)

    base.mkdir(parents=True)  # the base model is there: only the dataset is reported
    with pytest.raises(UserError) as err:
        vc.validate(path, for_training=True)
    assert f"{path} is not valid (1 problem(s))" in str(err.value)
    assert "base_model folder not found" not in str(err.value)

    assert vc.validate(config(fixtures / "train.jsonl"), for_training=True)["base_model"] == str(base)


def test_gpu_only_config_on_cpu_says_use_tiny(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = ROOT / "axolotl_configs/real/1a_base_sft.yml"
    problems = vc.hardware_problems(path, vc.load_config(path))
    assert len(problems) == 1 and "needs a CUDA GPU (bf16, tf32, attn_implementation: flash_attention_2)" in problems[0]
    assert "use PROFILE=tiny" in problems[0]


def test_finished_run_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    (out / "checkpoint-5").mkdir(parents=True)
    # Axolotl pre-saves adapter_config.json when training starts: a killed run still resumes.
    (out / "adapter_config.json").write_text("{}")
    assert vc.prepare_output({"output_dir": str(out)}, None, overwrite=False) == out
    (out / "adapter_model.safetensors").write_text("")
    with pytest.raises(UserError, match=r"already holds a finished run.*OVERWRITE=1"):
        vc.prepare_output({"output_dir": str(out)}, None, overwrite=False)
    assert (out / "adapter_config.json").exists()  # refusal touches nothing
    vc.prepare_output({"output_dir": str(out)}, None, overwrite=True)
    assert not out.exists()


def test_cli_exits_nonzero_with_one_line_error(tmp_path, capsys):
    path = _edited(tmp_path, "learning_rate:", "learning_rat:")
    with pytest.raises(SystemExit) as exit_info:
        vc.run_cli(lambda _: vc.main([str(path)]))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {path} is not valid")


# Axolotl's own example configs (unmodified copies, see tests/fixtures/axolotl_examples/README.md).
EXAMPLES = ROOT / "tests" / "fixtures" / "axolotl_examples"


@pytest.mark.parametrize("name", [
    "llama-3/fft-8b-liger-fsdp.yaml", "gemma3n/gemma-3n-e2b-qlora.yml", "swanlab/lora-swanlab-profiling.yml",
    "llama-3/diffusion/pretrain-1b.yaml", "falcon-e/falcon-e-3b-dpo.yaml", "llama-3/instruct-dpo-lora-8b.yml",
    "llama-3/qlora-1b-kto.yaml", "mistral/orpo/mistral-qlora-orpo.yml"])
def test_axolotl_examples_with_plugins_and_preference_data_pass(name, capsys):
    path = EXAMPLES / name
    vc.validate(path)
    assert "unknown key" not in capsys.readouterr().err


def test_dataset_keys_axolotl_drops_for_dpo_are_notes(capsys):
    path = EXAMPLES / "llama-3/instruct-dpo-lora-8b.yml"
    assert [str(f) for f in vc.unknown_keys(path, vc.load_config(path))] == [
        f"{path}:23: `datasets.0.message_property_mappings` is ignored: Axolotl reads this entry as DPODataset, which drops it",
        f"{path}:26: `datasets.0.roles` is ignored: Axolotl reads this entry as DPODataset, which drops it"]
    vc.validate(path)
    assert "note: " in capsys.readouterr().err


@pytest.mark.parametrize("name, message", [
    ("falcon-h1/falcon-h1-1b-qlora-cp.yaml", ":42: unknown key `context_parapllel_size` (did you mean `context_parallel_size`?)"),
    ("llama-2/gptq-lora.yml", ":43: unknown key `adam_eps` (did you mean `adam_epsilon`?)"),
    ("archived/stablelm-2/1.6b/lora.yml", ":52: `flash_attn_rms_norm` is no longer supported."),
])
def test_axolotl_examples_with_real_mistakes_are_refused(name, message):
    path = EXAMPLES / name
    with pytest.raises(UserError) as err:
        vc.validate(path)
    assert f"{path}{message}" in str(err.value)


@pytest.mark.parametrize("rl, entry", [
    (None, {"path": "x", "type": "alpaca"}), ("dpo", {"path": "x", "type": "chatml.intel"}),
    ("ipo", {"path": "x", "type": "chatml.intel"}), ("simpo", {"path": "x", "type": "chatml.intel"}),
    ("kto", {"path": "x", "type": "llama3.ultra"}), ("orpo", {"path": "x", "type": "chat_template.argilla"}),
    (None, {"type": "_synthetic"})])
def test_dataset_model_is_the_one_axolotl_reads_the_entry_as(rl, entry):
    """Pins the mirror of Axolotl's rule: its validate_config converts `datasets` entries in place."""
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    cfg = vc.load_config(EXAMPLES / "llama-3/qlora-1b-kto.yaml")
    cfg.pop("warmup_ratio")  # simpo refuses it
    cfg = DictDefault({**cfg, "rl": rl, "datasets": [entry]})
    validate_config(cfg)
    assert vc.dataset_models(cfg, "datasets", entry) == (type(cfg["datasets"][0]),)


def test_plugin_option_without_its_plugin_names_the_plugin_to_add(tmp_path):
    text = (EXAMPLES / "llama-3/fft-8b-liger-fsdp.yaml").read_text()
    listed = "plugins:\n  - axolotl.integrations.liger.LigerPlugin\n"
    path = tmp_path / "cfg.yml"
    path.write_text(text.replace(listed, ""))
    with pytest.raises(UserError) as err:
        vc.validate(path)
    assert ("`liger_rms_norm` is an option of the Liger plugin: "
            "add `plugins: [axolotl.integrations.liger.LigerPlugin]`") in str(err.value)

    path.write_text(text.replace(listed, "plugins:\n  - axolotl.integrations.liger.LigrPlugin\n"))
    with pytest.raises(UserError) as err:
        vc.validate(path)
    assert (f"{path}:5: plugin `axolotl.integrations.liger.LigrPlugin` not found "
            "(did you mean `axolotl.integrations.liger.LigerPlugin`?)") in str(err.value)


def test_plugin_whose_package_is_missing_is_a_note_until_training(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "needs_dep.py").write_text("import dep_not_installed_here\n")
    path = tmp_path / "cfg.yml"
    path.write_text((ROOT / "axolotl_configs/tiny/1a_base_sft.yml").read_text()
                    + "plugins:\n  - needs_dep.DepPlugin\nneeds_dep_option: 1\n")
    cfg = vc.load_config(path)
    [problem] = vc.plugin_problems(path, cfg)
    assert isinstance(problem, vc.MachineLimit)
    assert "plugin `needs_dep.DepPlugin` cannot be loaded: the package `dep-not-installed-here` is not installed" in problem
    [unchecked] = vc.unknown_keys(path, cfg)
    assert isinstance(unchecked, vc.Note) and "`needs_dep_option` was not checked" in unchecked


def test_gpu_only_package_missing_is_one_line_and_refused_for_training(monkeypatch, capsys):
    if importlib.util.find_spec("ring_flash_attn"):
        pytest.skip("ring-flash-attn is installed here")
    path = EXAMPLES / "distributed-parallel/qwen3-8b-fsdp-tp-cp.yaml"
    vc.validate(path)  # the config is fine; this machine lacks a package that Axolotl's check imports
    expected = "`ring-flash-attn` is not installed here: it is a GPU-only package, needed on the GPU host"
    assert expected in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError) as err:
        vc.validate(path, for_training=True)
    assert "(2 problem(s))" in str(err.value) and expected in str(err.value) and "use PROFILE=tiny" in str(err.value)


def test_hardware_only_refuses_the_real_profile_on_cpu_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    path = "axolotl_configs/real/1a_base_sft.yml"
    with pytest.raises(SystemExit):
        vc.run_cli(lambda _: vc.main(["--hardware-only", str(ROOT / path)]))
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("error: ") and "needs a CUDA GPU" in line and "use PROFILE=tiny" in line
