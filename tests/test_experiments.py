"""`make experiments`: the diff of a run's config, the table read from run folders (checkpoint
trainer_state.json, tensorboard events, debug.log, model card, eval summaries), and the plot.
Run folders here are written by hand in the layout Axolotl 0.19 leaves (studied on a tiny 1A run)."""

import json
from pathlib import Path

import pytest
import yaml

from glue.train.experiments import config_diff, format_change, read_run, report
from glue.train.new_experiment import new_experiment
from glue.train.render import render_stage

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "axolotl_configs/tiny/1a_base_sft.yml"


def write_debug_log(folder: Path, config: Path, *tail: str) -> None:
    """What each Axolotl command appends to debug.log: its config dump (the session marker),
    then whatever it printed."""
    folder.mkdir(parents=True, exist_ok=True)
    dump = f'[2026-12-03 09:27:18,046] [INFO] [axolotl.cli.config.load_cfg:345] config:\n{{\n  "axolotl_config_path": ' \
           f'{json.dumps(str(config))},\n  "base_model": "work/tiny/base_model"\n}}\n'
    with (folder / "debug.log").open("a") as fh:
        fh.write(dump + "".join(line + "\n" for line in tail))


def write_checkpoint(folder: Path, step: int, max_steps: int, log_history: list[dict]) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "adapter_model.safetensors").write_bytes(b"weights")
    state = {"global_step": step, "max_steps": max_steps, "log_history": [e for e in log_history if e["step"] <= step]}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    return checkpoint


def write_session(folder: Path, name: str, wall: float, points: dict[int, dict], runtime: float | None = None) -> None:
    """One training session's tensorboard events, tagged as the Trainer's callback tags them
    (train/loss, eval/loss, train/tokens/total, train/train_runtime), one second per step."""
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    writer = EventFileWriter(str(folder / "runs" / name))
    last = max(points)
    for step, values in sorted(points.items()):
        tags = {("eval/" + k[5:] if k.startswith("eval_") else "train/" + k): v for k, v in values.items()}
        writer.add_event(Event(wall_time=wall + step, step=step, summary=Summary(
            value=[Summary.Value(tag=tag, simple_value=v) for tag, v in tags.items()])))
    if runtime is not None:
        writer.add_event(Event(wall_time=wall + last + 1, step=last, summary=Summary(
            value=[Summary.Value(tag="train/train_runtime", simple_value=runtime)])))
    writer.close()


def history(steps, loss, eval_every, eval_loss, tokens_per_step=1000) -> list[dict]:
    """A log_history like the Trainer's: a loss and tokens/total per step, eval_loss every few."""
    entries = [{"step": 0, "eval_loss": eval_loss(0)}]
    for step in steps:
        entries.append({"step": step, "loss": loss(step), "tokens/total": tokens_per_step * step})
        if step % eval_every == 0:
            entries.append({"step": step, "eval_loss": eval_loss(step)})
    return entries


def by_step(entries: list[dict]) -> dict[int, dict]:
    points: dict[int, dict] = {}
    for entry in entries:
        points.setdefault(entry["step"], {}).update({k: v for k, v in entry.items() if k != "step"})
    return points


# ---- the diff ----------------------------------------------------------------------------

def test_config_diff_names_nested_keys_and_missing_ones():
    old = {"learning_rate": 0.001, "lora_r": 8, "datasets": [{"path": "a.jsonl", "type": "chat_template"}],
           "gone": True, "output_dir": "x"}
    new = {"learning_rate": 0.0002, "lora_r": 8, "datasets": [{"path": "b.jsonl", "type": "chat_template"}],
           "added": [1, 2], "output_dir": "y"}
    diffs = config_diff(old, new, skip=("output_dir",))
    assert [format_change(d) for d in diffs] == [
        "learning_rate: 0.001 -> 0.0002", "datasets.0.path: a.jsonl -> b.jsonl", "gone: true -> (unset)",
        "added: (unset) -> [1, 2]"]
    assert config_diff(old, old) == []


def test_experiment_copy_is_diffed_against_the_config_it_was_copied_from(tmp_path):
    dest = tmp_path / "axolotl_configs" / "experiments"
    copy = new_experiment(SOURCE, "lr_low", dest, changes={"learning_rate": "0.0002", "lora_r": "16"},
                          made_by="make sweep")
    text = copy.read_text()
    assert "learning_rate: 0.0002  # make sweep; was 0.003 in 1a_base_sft.yml\n" in text
    assert "# Set by `make sweep`: learning_rate, lora_r" in text
    copy.write_text(text.replace("micro_batch_size: 16", "micro_batch_size: 2"))  # an edit by hand
    run = read_run(tmp_path / "work" / "experiments" / "lr_low", tmp_path / "work", [], config=copy)
    assert run.status == "not started" and run.against == "axolotl_configs/tiny/1a_base_sft.yml"
    # output_dir and wandb_name, which every copy changes, are not listed
    assert [format_change(c) for c in run.changes] == [
        "lora_r: 8 -> 16", "micro_batch_size: 16 -> 2", "learning_rate: 0.003 -> 0.0002"]


def test_stage_run_is_diffed_against_a_fresh_render(tmp_path):
    """A stage run names axolotl_configs/<profile>/<stage>.yml; what it trained (the model card's
    copy) is compared with the render of templates/, so a hand edit of a rendered file shows."""
    rendered = render_stage("tiny", "1a_base_sft")
    folder = tmp_path / "work" / "1a_base_sft"
    write_debug_log(folder, Path("axolotl_configs/tiny/1a_base_sft.yml"))
    trained = rendered.replace("\nseed: 42", "\nseed: 7")
    assert trained != rendered
    (folder / "README.md").write_text("<details><summary>See axolotl config</summary>\n\naxolotl version: `0.19.0`\n"
                                      f"```yaml\n{trained}\n```\n\n</details><br>\n")
    (folder / "adapter_model.safetensors").write_bytes(b"final")
    run = read_run(folder, tmp_path / "work", [])
    assert run.config == ROOT / "axolotl_configs/tiny/1a_base_sft.yml" and run.status == "finished"
    assert run.against == "template render" and [format_change(c) for c in run.changes] == ["seed: 42 -> 7"]


# ---- the table ---------------------------------------------------------------------------

@pytest.fixture
def work(tmp_path):
    """A work folder with a finished run that was resumed once (two tensorboard sessions, the
    first cut off after checkpoint-4 at step 6) and evaluated; an interrupted one; a failed one;
    and one stopped with Ctrl-C."""
    work = tmp_path / "work"
    config = tmp_path / "cfg.yml"
    config.write_text(yaml.safe_dump({"base_model": "b", "output_dir": "o", "max_steps": 8}))

    done = work / "experiments" / "done"
    entries = history(range(1, 9), loss=lambda s: 3.0 - 0.1 * s, eval_every=4,
                      eval_loss=lambda s: {0: 3.5, 4: 2.5, 8: 2.7}[s])
    write_debug_log(done, config, "Training ...")
    write_checkpoint(done, 4, 8, entries)
    killed_at_6 = [dict(e, loss=9.9) if "loss" in e and e["step"] > 4 else e for e in entries if e["step"] <= 6]
    write_session(done, "s1", 1000.0, by_step(killed_at_6))  # no train_runtime: 1000 .. 1006 = 6 s
    write_debug_log(done, config, "Resuming from checkpoint-4")
    write_session(done, "s2", 2000.0, by_step([e for e in entries if e["step"] > 4]), runtime=10.0)
    write_checkpoint(done, 8, 8, entries)
    (done / "adapter_config.json").write_text("{}")
    (done / "adapter_model.safetensors").write_bytes(b"final")
    (done / "merged").mkdir()
    summary = {"name": "done_eval", "model": str(done / "merged"), "verdict": "PASS",
               "rows": [{"task": "a", "score": 0.5}, {"task": "b", "score": 0.25}, {"task": "c", "score": None}]}
    (work / "eval" / "done_eval").mkdir(parents=True)
    (work / "eval" / "done_eval" / "summary.json").write_text(json.dumps(summary))

    cut = work / "experiments" / "cut"
    write_debug_log(cut, config, "  3%|          | 5/8")
    write_checkpoint(cut, 5, 8, history(range(1, 6), loss=lambda s: 4.0, eval_every=5,
                                               eval_loss=lambda s: 4.5 if s == 0 else 4.4))
    (cut / "adapter_config.json").write_text("{}")  # Axolotl pre-saves it when training starts

    broken = work / "experiments" / "broken"
    write_debug_log(broken, config, "Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
                    "torch.OutOfMemoryError: CUDA out of memory.", "[2026-12-03 09:38:23,636] [WARNING] [x] after")

    stopped = work / "experiments" / "stopped"
    write_debug_log(stopped, config, "Traceback (most recent call last):", "KeyboardInterrupt")
    return work


def test_table_shows_status_steps_time_losses_and_eval(work, tmp_path):
    out = work / "experiments_report"
    runs, table = report(work, out)
    rows = {r.name: r for r in runs}
    assert list(rows) == ["experiments/broken", "experiments/cut", "experiments/done", "experiments/stopped"]

    done = rows["experiments/done"]
    assert done.status == "finished" and done.step == 8 and done.max_steps == 8
    assert done.train_seconds == pytest.approx(16.0)  # the cut session's 6 s of events + the resumed one's runtime
    assert done.tokens_per_second == pytest.approx(8000 / 16.0)
    assert done.final_train_loss == pytest.approx(2.2)
    # the resumed session's steps 5-6 replace those of the session that was cut off
    assert dict(done.train_curve)[5] == pytest.approx(2.5) and dict(done.train_curve)[6] == pytest.approx(2.4)
    assert (done.best_eval_loss, done.best_eval_step) == (pytest.approx(2.5), 4)
    assert done.eval["name"] == "done_eval" and done.eval["mean_score"] == pytest.approx(0.375)
    assert rows["experiments/cut"].status == "interrupted" and rows["experiments/cut"].detail == "checkpoint-5"
    assert rows["experiments/cut"].train_seconds is None and rows["experiments/cut"].step == 5
    assert rows["experiments/broken"].status == "failed"
    assert rows["experiments/broken"].detail == "torch.OutOfMemoryError: CUDA out of memory."
    assert rows["experiments/stopped"].status == "interrupted" and rows["experiments/stopped"].detail == "no checkpoint"

    line = next(line for line in table.splitlines() if line.startswith("| experiments/done "))
    assert line == (f"| experiments/done | {tmp_path / 'cfg.yml'} | - | finished | 8/8 | 16.0 s | 500 | 2.2000 | "
                    "2.5000 (4) | done_eval: 0.375 (2/3 tasks) PASS |")
    assert "| interrupted (checkpoint-5) | 5/8 | - | - | 4.0000 | 4.4000 (5) | - |" in table
    markdown = (out / "experiments.md").read_text()
    assert table in markdown and "![train and eval loss](losses.png)" in markdown
    saved = json.loads((out / "experiments.json").read_text())["runs"]
    assert [r["name"] for r in saved] == list(rows) and saved[2]["train_curve"][0] == [1, pytest.approx(2.9)]
    assert (out / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "manifest.json").read_text())["figures"] == {
        "runs": 4, "finished": 1, "interrupted": 2, "failed": 1, "not started": 0}


def test_match_keeps_table_and_plot_to_the_runs_named(work):
    out = work / "experiments_report"
    runs, table = report(work, out, match="*/do*")
    assert [r.name for r in runs] == ["experiments/done"] and table.count("\n") == 3
    runs, _ = report(work, out, match="nothing*")
    assert runs == [] and not (out / "losses.png").exists()
