"""`make new-experiment`: a copy that trains into its own folder, every other line intact."""

import json
import os
import subprocess
import sys
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
    lines = target.read_text().splitlines()
    # The new values were not set by templates/: their lines no longer name a template key.
    assert "output_dir: work/tiny/experiments/lr_high" in lines and "wandb_name: lr_high" in lines
    assert "learning_rate: 3.0e-3  # templates/profiles/tiny.yml: stages.1a_base_sft.learning_rate" in lines
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


def test_edited_copy_trains_with_the_edit(dest, tmp_path, tiny_config, tiny_base):
    """The workflow the header of a copy describes: copy, edit a number, train. The source is
    the tiny 1A config pointed at the test's base model and the bundled data, so the copy trains
    into tmp_path; Axolotl trains it for real (CPU, a few steps) and the run shows both edits."""
    source = tiny_config(tiny_base, tmp_path / "runs" / "1a_base_sft")
    target = new_experiment(source, "short_low_lr", dest)
    text = target.read_text()
    assert "\nmax_steps: 10  #" in text and "\nlearning_rate: 3.0e-3  #" in text
    target.write_text(text.replace("\nmax_steps: 10  #", "\nmax_steps: 3  #")
                      .replace("\nlearning_rate: 3.0e-3  #", "\nlearning_rate: 0.0002  #"))
    cfg = validate(target, for_training=True)
    run = Path(cfg["output_dir"])
    assert run == tmp_path / "runs" / "experiments" / "short_low_lr"

    bin_dir = Path(sys.executable).parent  # `axolotl train` launches `accelerate` by name
    result = subprocess.run([sys.executable, "-m", "glue.train.axolotl_run", "axolotl", "train", str(target)],
                            cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (run / "adapter_config.json").is_file()
    state = json.loads((run / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["max_steps"] == 3 and state["global_step"] == 3
    rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    # the config's cosine schedule (no warmup) from the edited peak over the edited 3 steps
    assert rates == pytest.approx([0.0002, 0.0002 * 0.75, 0.0002 * 0.25]), rates
