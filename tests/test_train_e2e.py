"""What a user types: `make train` and `make merge` on a tiny config, for real (Axolotl on CPU).

The targets depend on the training environment's setup stamp (.venv/.installed-<hash of
requirements.txt>); a stale or missing stamp would start `pip install` in the middle of a test.
`make -o STAMP` treats the stamp as up to date, so these tests run the targets' own commands
in the environment as it is, and never set it up."""

import hashlib
import json
import shutil
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The Makefile's STAMP: $(VENV)/.installed-$(shell sha256sum requirements.txt | cut -c1-16)
STAMP = f".venv/.installed-{hashlib.sha256((ROOT / 'requirements.txt').read_bytes()).hexdigest()[:16]}"


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-o", STAMP, *args, "PROFILE=tiny"], cwd=ROOT,
                          capture_output=True, text=True)


@pytest.mark.parametrize("target", ["train", "merge"])
def test_targets_run_without_setting_up(target, tmp_path):
    """With requirements.txt taken as just edited (`-W`), plain make would set .venv up again
    before the target's commands; with `-o STAMP` (this module's make) it runs them alone. A
    dry run (`-n`) shows both without running anything."""
    args = ["-n", "-W", "requirements.txt", target, f"CONFIG={tmp_path / 'cfg.yml'}"]
    command = f"glue.train.{'validate_config' if target == 'train' else 'merge'}"
    plain = subprocess.run(["make", "--no-print-directory", *args, "PROFILE=tiny"], cwd=ROOT,
                           capture_output=True, text=True)
    assert plain.returncode == 0 and "pip install" in plain.stdout and command in plain.stdout, plain.stderr
    result = make(*args)
    assert result.returncode == 0 and command in result.stdout, result.stderr
    assert "pip" not in result.stdout and "setup:" not in result.stdout, result.stdout


def losses(checkpoint: Path) -> list[float]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


@pytest.mark.slow
def test_train_learns_resumes_refuses_a_finished_run_and_merges(tmp_path, tiny_config, tiny_base):
    run = tmp_path / "run"
    config = tiny_config(tiny_base, run)

    result = make("train", f"CONFIG={config}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_base) and adapter["r"] == 8
    history = losses(run / "checkpoint-10")
    assert len(history) == 10 and sum(history[-3:]) < sum(history[:3]), history

    refused = make("train", f"CONFIG={config}")
    assert refused.returncode != 0 and "already holds a finished run" in refused.stderr

    # An interrupted run (checkpoint-5 only, no final adapter) continues where it stopped.
    shutil.rmtree(run / "checkpoint-10")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (run / name).unlink()
    resumed = make("train", f"CONFIG={config}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "checkpoint-5" in resumed.stdout + resumed.stderr
    assert len(losses(run / "checkpoint-10")) == 10  # steps 1-5 from before, 6-10 after resuming

    merged = make("merge", f"CONFIG={config}")
    assert merged.returncode == 0, merged.stderr[-3000:]
    figures = json.loads((run / "merged" / "manifest.json").read_text())["figures"]
    assert figures["failures"] == [] and figures["relative_diff"] <= 1e-5


def test_train_without_config_says_how(tmp_path):
    result = make("train")
    assert result.returncode != 0 and "set CONFIG=<axolotl config>" in result.stderr


def test_train_1a_on_a_host_that_cannot_train_stops_before_building_data(tmp_path):
    """The real profile on a machine without a GPU: one line naming the reason, and no
    `make data` run first (it would curate the real sources for nothing)."""
    data = tmp_path / "data"
    result = subprocess.run(["make", "--no-print-directory", "-o", STAMP, "train-1a", "PROFILE=real", f"DATA={data}"],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode != 0 and "needs a CUDA GPU" in result.stderr and "use PROFILE=tiny" in result.stderr
    assert "glue.data.curate" not in result.stdout and not data.exists()


def test_unknown_profile_is_one_line(tmp_path):
    result = subprocess.run(["make", "train-1a", "PROFILE=huge"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "unknown PROFILE=huge: the profiles are real tiny" in result.stderr
