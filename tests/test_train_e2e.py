"""What a user types: `make train` and `make merge` on a tiny config, for real (Axolotl on CPU)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", *args, "PROFILE=tiny"], cwd=ROOT,
                          capture_output=True, text=True)


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


def test_unknown_profile_is_one_line(tmp_path):
    result = subprocess.run(["make", "train-1a", "PROFILE=huge"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "unknown PROFILE=huge: the profiles are real tiny" in result.stderr
