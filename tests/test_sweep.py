"""`make sweep`: one validated experiment copy per combination, trained in turn, resumed by a
rerun. The fast tests stand a function that writes what Axolotl writes in for Axolotl; the last
test trains a two-value sweep on the tiny model for real and resumes it."""

import json
import shutil
import time
from pathlib import Path

import pytest
import yaml

from glue.core.io import UserError
from glue.train.sweep import parse_set, sweep, value_text
from tests.test_experiments import by_step, history, write_checkpoint, write_debug_log, write_session


class FakeAxolotl:
    """Trains a copy as Axolotl would leave it, step by step: debug.log, adapter_config.json at the
    start, a checkpoint every 2 steps, tensorboard events, then the model card and final weights.
    `interrupt` names a copy whose training is cut off (KeyboardInterrupt) after its first checkpoint."""

    def __init__(self, interrupt: str | None = None, fail: str | None = None):
        self.calls, self.interrupt, self.fail = [], interrupt, fail

    def __call__(self, config: Path, resume: Path | None) -> int:
        self.calls.append((config.stem, resume.name if resume else None))
        cfg = yaml.safe_load(config.read_text())
        folder, steps, rate = Path(cfg["output_dir"]), cfg["max_steps"], cfg["learning_rate"]
        write_debug_log(folder, config)
        if config.stem == self.fail:
            write_debug_log(folder, config, "Traceback (most recent call last):", "ValueError: bad value")
            return 1
        (folder / "adapter_config.json").write_text("{}")
        entries = history(range(1, steps + 1), loss=lambda s: 5.0 - rate * 100 * s, eval_every=2,
                          eval_loss=lambda s: 5.5 - rate * 100 * s)
        start = int(resume.name.split("-")[1]) if resume else 0
        stop = start + 2 if config.stem == self.interrupt else steps
        for step in range(start + 2, stop + 1, 2):
            write_checkpoint(folder, step, steps, entries)
        write_session(folder, f"session{len(self.calls)}", time.time(),
                      by_step([e for e in entries if start <= e["step"] <= stop]), runtime=0.5 * (stop - start))
        if config.stem == self.interrupt:
            raise KeyboardInterrupt
        (folder / "README.md").write_text("<details><summary>See axolotl config</summary>\n\naxolotl version: `0.19.0`\n"
                                          f"```yaml\n{config.read_text()}\n```\n\n</details><br>\n")
        (folder / "adapter_model.safetensors").write_bytes(b"final")
        return 0


@pytest.fixture
def source(tmp_path, tiny_config):
    """The tiny 1A config, pointed at the bundled data, a stand-in base folder and tmp_path/work;
    4 steps keep the stand-in runs short."""
    (tmp_path / "base").mkdir()
    return tiny_config(tmp_path / "base", tmp_path / "work" / "1a_base_sft",
                       lambda text: text.replace("max_steps: 10", "max_steps: 4"))


@pytest.fixture
def dest(tmp_path):
    return tmp_path / "axolotl_configs" / "experiments"


def test_set_is_parsed_and_numbers_stay_numbers():
    assert parse_set("learning_rate=1e-4,2e-4  lora_r=16") == {"learning_rate": ["1e-4", "2e-4"], "lora_r": ["16"]}
    assert yaml.safe_load(value_text("1e-4")) == 0.0001  # plain YAML would load the string "1e-4"
    assert value_text("16") == "16" and value_text("cosine") == "cosine" and value_text("true") == "true"
    for bad, message in (("learning_rate", "is not key=value"), ("lr=1,1", "repeated"), ("a=1 a=2", "twice"),
                         ("output_dir=x", "set by the sweep itself"), ("datasets.0.path=x", "top-level"),
                         ("", "SET is empty")):
        with pytest.raises(UserError, match=message):
            parse_set(bad)


def test_a_misspelt_key_is_refused_with_its_suggestion_and_nothing_is_kept(source, dest):
    fake = FakeAxolotl()
    with pytest.raises(UserError, match=r"unknown key `learning_rat` \(did you mean `learning_rate`\?\)"):
        sweep(source, "learning_rat=1e-4,2e-4", prefix="t", dest=dest, train=fake)
    assert fake.calls == [] and list(dest.glob("*.yml")) == []


def test_interrupted_sweep_resumes_where_it_stopped(source, dest, tmp_path, capsys):
    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        sweep(source, "learning_rate=2e-3,2e-4", prefix="t", dest=dest,
              train=FakeAxolotl(interrupt="t.learning_rate-2e-4"))
    first = capsys.readouterr().out
    assert "sweep t: 2 runs (learning_rate (2))" in first and "0 finished (skipped), 0 to resume, 2 to train" in first
    assert "first run:" in first and "1 more to train: expected" in first
    copy = (dest / "t.learning_rate-2e-3.yml").read_text()
    assert "learning_rate: 0.002  # make sweep; was 0.003 in cfg.yml\n" in copy
    written = yaml.safe_load(copy)
    assert (written["output_dir"], written["wandb_name"]) == (str(work / "experiments" / "t.learning_rate-2e-3"),
                                                              "t.learning_rate-2e-3")

    resumed = FakeAxolotl()
    runs, out = sweep(source, "learning_rate=2e-3,2e-4", prefix="t", dest=dest, train=resumed)
    assert resumed.calls == [("t.learning_rate-2e-4", "checkpoint-2")]  # the finished one is skipped
    assert "1 finished (skipped), 1 to resume, 0 to train from the start" in capsys.readouterr().out
    assert [(r.name, r.status, r.step) for r in runs] == [
        ("experiments/t.learning_rate-2e-3", "finished", 4), ("experiments/t.learning_rate-2e-4", "finished", 4)]
    assert [[f"{c['key']}: {c['old']} -> {c['new']}" for c in r.changes] for r in runs] == [
        ["learning_rate: 0.003 -> 0.002"], ["learning_rate: 0.003 -> 0.0002"]]
    assert runs[1].session_seconds == [1.0, 1.0]  # two sessions: cut after step 2, resumed to step 4
    assert runs[0].final_train_loss == pytest.approx(5.0 - 0.2 * 4)
    assert runs[1].final_train_loss == pytest.approx(5.0 - 0.02 * 4)
    assert out == work / "experiments_report" / "sweep_t"
    table = (out / "experiments.md").read_text()
    assert "| experiments/t.learning_rate-2e-4 |" in table and "learning_rate: 0.003 -> 0.0002" in table
    assert json.loads((out / "experiments.json").read_text())["runs"][1]["best_eval_loss"] == pytest.approx(5.42)

    again = FakeAxolotl()
    sweep(source, "learning_rate=2e-3,2e-4", prefix="t", dest=dest, train=again)
    assert again.calls == []


def test_a_failed_run_does_not_stop_the_rest_and_is_retried(source, dest, capsys):
    with pytest.raises(UserError, match=r"1 run\(s\) failed: t.lora_r-4 \(exit status 1\)"):
        sweep(source, "lora_r=4,16", prefix="t", dest=dest, train=FakeAxolotl(fail="t.lora_r-4"))
    assert "| failed (ValueError: bad value) |" in capsys.readouterr().out
    retry = FakeAxolotl()
    runs, _ = sweep(source, "lora_r=4,16", prefix="t", dest=dest, train=retry)
    assert retry.calls == [("t.lora_r-4", None)] and {r.status for r in runs} == {"finished"}


def test_a_copy_that_no_longer_matches_its_source_is_refused(source, dest):
    sweep(source, "lora_r=4", prefix="t", dest=dest, train=FakeAxolotl())
    source.write_text(source.read_text().replace("micro_batch_size: 16", "micro_batch_size: 2"))
    with pytest.raises(UserError, match=r"t.lora_r-4.yml exists but is not this sweep's copy "
                                        r"\(micro_batch_size: 2 -> 16\)"):
        sweep(source, "lora_r=4", prefix="t", dest=dest, train=FakeAxolotl())


def test_two_value_sweep_trains_on_the_tiny_model_and_resumes(tmp_path, tiny_config, tiny_base, dest):
    """Axolotl for real: both runs train (3 steps, eval every step, checkpoints at 2 and 3), the
    table shows the changed key and each run's losses, and the plot overlays them. Then the second
    run is made to look interrupted after checkpoint-2, as a kill leaves it, and the same sweep
    resumes it while the first is left alone."""
    source = tiny_config(tiny_base, tmp_path / "work" / "1a_base_sft", lambda text: text.replace(
        "max_steps: 10", "max_steps: 3").replace("eval_steps: 5", "eval_steps: 1").replace("save_steps: 5", "save_steps: 2"))
    runs, out = sweep(source, "learning_rate=5e-3,2e-4", prefix="t", dest=dest)
    assert [(r.status, r.step, r.max_steps) for r in runs] == [("finished", 3, 3)] * 2
    assert [[f"{c['key']}: {c['old']} -> {c['new']}" for c in r.changes] for r in runs] == [
        ["learning_rate: 0.003 -> 0.005"], ["learning_rate: 0.003 -> 0.0002"]]
    for run, rate in zip(runs, (0.005, 0.0002)):
        assert [step for step, _ in run.train_curve] == [1, 2, 3] and [s for s, _ in run.eval_curve] == [0, 1, 2, 3]
        assert run.final_train_loss > 0 and run.best_eval_loss > 0 and run.train_seconds > 0
        state = json.loads((run.folder / "checkpoint-3" / "trainer_state.json").read_text())
        assert state["log_history"][1]["learning_rate"] == pytest.approx(rate)  # the copy trained with its value
    table = (out / "experiments.md").read_text()
    assert "learning_rate: 0.003 -> 0.005" in table and f"{runs[1].final_train_loss:.4f}" in table
    assert (out / "losses.png").stat().st_size > 10_000

    first_log = (runs[0].folder / "debug.log").stat().st_mtime_ns
    second = runs[1].folder
    shutil.rmtree(second / "checkpoint-3")
    for name in ("adapter_model.safetensors", "README.md"):
        (second / name).unlink()
    resumed, _ = sweep(source, "learning_rate=5e-3,2e-4", prefix="t", dest=dest)
    assert (runs[0].folder / "debug.log").stat().st_mtime_ns == first_log
    assert resumed[1].status == "finished" and len(resumed[1].session_seconds) == 2
    assert f'"resume_from_checkpoint": "{second / "checkpoint-2"}"' in (second / "debug.log").read_text()
    state = json.loads((second / "checkpoint-3" / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3]
