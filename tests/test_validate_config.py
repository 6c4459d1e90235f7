"""Every rendered config passes Axolotl's own schema, and the mistakes Axolotl lets through
(unknown keys, missing files, GPU options on CPU, a finished run in the way) are caught
with the file, the line and what to do."""

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
    path = _edited(tmp_path, "learning_rate: 0.001", "learning_rate: fast")
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
    assert vc.prepare_output({"output_dir": str(out)}, None, overwrite=False) == out  # resumable, allowed
    (out / "adapter_config.json").write_text("{}")
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
