"""`make new-experiment`: a copy that trains into its own folder, every other line intact."""

from pathlib import Path

import pytest
import yaml

from glue.core.io import UserError
from glue.train.new_experiment import new_experiment
from glue.train.validate_config import validate

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "axolotl_configs/tiny/1a_base_sft.yml"


@pytest.fixture
def dest(tmp_path):
    return tmp_path / "axolotl_configs" / "experiments"


def test_copy_gets_its_own_output_dir_and_run_name(dest):
    target = new_experiment(SOURCE, "lr_high", dest)
    original, copy = yaml.safe_load(SOURCE.read_text()), yaml.safe_load(target.read_text())
    assert copy["output_dir"] == "work/tiny/experiments/lr_high" and copy["wandb_name"] == "lr_high"
    assert {k: v for k, v in copy.items() if k not in ("output_dir", "wandb_name")} == \
        {k: v for k, v in original.items() if k not in ("output_dir", "wandb_name")}
    assert target.read_text().startswith("# Experiment `lr_high`: copied from")
    assert "# Axolotl's Triton LoRA kernels hard-code CUDA" in target.read_text()  # comments kept
    validate(target)


def test_two_experiments_never_share_a_folder(dest):
    a = new_experiment(SOURCE, "a", dest)
    b = new_experiment(a, "b", dest)  # a copy of a copy stays beside it, not nested
    dirs = {yaml.safe_load(p.read_text())["output_dir"] for p in (SOURCE, a, b)}
    assert dirs == {"work/tiny/1a_base_sft", "work/tiny/experiments/a", "work/tiny/experiments/b"}


def test_existing_name_and_bad_name_are_refused(dest):
    new_experiment(SOURCE, "same", dest)
    with pytest.raises(UserError, match="already exists: pick another NAME"):
        new_experiment(SOURCE, "same", dest)
    with pytest.raises(UserError, match="must be letters, digits"):
        new_experiment(SOURCE, "../escape", dest)


def test_edited_copy_trains_with_the_edit(dest):
    target = new_experiment(SOURCE, "lr_low", dest)
    target.write_text(target.read_text().replace("learning_rate: 0.001", "learning_rate: 0.0001"))
    assert validate(target)["learning_rate"] == 0.0001
