"""Every training run under a profile's work folder side by side (`make experiments`): the config
it trained and what differs from the config it was copied from, its status, steps, time,
tokens/s, final train loss, best eval loss and, where `make eval` scored it, the eval suite's
mean score and verdict. Writes experiments.md, experiments.json and losses.png (the train and
eval loss curves of the runs overlaid).

Everything is read from the run folders. The config: the path Axolotl's debug.log names, and the
text Axolotl's model card (README.md) holds once the run finished, which is what trained even if
the file was edited since. Losses and time: the tensorboard events of every session (steps after
the last checkpoint and the final summary are only there) laid over the newest checkpoint's
trainer_state.json. Evaluations: <work>/eval/*/summary.json whose model lies in the run folder.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from glue.core.checkpoints import finished_run
from glue.core.io import atomic_path, load_yaml, run_cli, write_text_atomic
from glue.core.manifest import write_manifest
from glue.core.paths import ROOT, profile_names, relative
from glue.train.new_experiment import copied_from
from glue.train.render import OUT as RENDERED
from glue.train.render import load_stages, render_stage, yaml_scalar

# new_experiment sets both on every copy: a difference there is by construction, not a change.
SET_BY_COPY = ("output_dir", "wandb_name")
UNSET = "(unset)"
REPORT_FILES = ("experiments.md", "experiments.json", "losses.png")
# Each Axolotl command dumps its config into debug.log when it starts: a session marker.
CONFIG_PATH = re.compile(r'"axolotl_config_path": ("(?:[^"\\]|\\.)*")')
EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b")
MODEL_CARD_CONFIG = re.compile(r"<summary>See axolotl config</summary>\s*axolotl version: `[^`]*`\s*```yaml\n(.*?)\n```\n"
                               r"\s*</details>", re.S)


@dataclass
class Run:
    name: str  # the run folder, relative to the work folder
    folder: Path
    config: Path | None
    against: str | None  # what `changes` compares with: the config it was copied from, or the template render
    changes: list[dict] | None
    status: str  # finished, interrupted, failed, not started
    detail: str  # interrupted: its last checkpoint; failed: the exception
    checkpoint: Path | None
    step: int | None
    max_steps: int | None
    train_seconds: float | None
    session_seconds: list[float]
    tokens_per_second: float | None
    final_train_loss: float | None
    best_eval_loss: float | None
    best_eval_step: int | None
    eval: dict | None
    train_curve: list[tuple[int, float]] = field(default_factory=list)
    eval_curve: list[tuple[int, float]] = field(default_factory=list)


def in_repo(path: str | Path) -> Path:
    """Paths that make wrote (configs, eval models) are relative to the repository root."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def config_diff(old: Any, new: Any, skip: tuple[str, ...] = (), prefix: str = "") -> list[dict]:
    """Every value that differs between two configs, as {key, old, new} with dotted keys
    (`datasets.0.path`); a key only one side has shows UNSET on the other."""
    if isinstance(old, dict) and isinstance(new, dict):
        diffs = []
        for key in [*old, *(k for k in new if k not in old)]:
            if key in skip:
                continue
            dotted = f"{prefix}{key}"
            if key not in old or key not in new:
                diffs.append({"key": dotted, "old": old.get(key, UNSET), "new": new.get(key, UNSET)})
            else:
                diffs += config_diff(old[key], new[key], prefix=f"{dotted}.")
        return diffs
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [d for i, (a, b) in enumerate(zip(old, new)) for d in config_diff(a, b, prefix=f"{prefix}{i}.")]
    return [] if old == new else [{"key": prefix.rstrip("."), "old": old, "new": new}]


def format_change(change: dict) -> str:
    def show(value):
        return UNSET if value == UNSET else yaml_scalar(value)
    return f"{change['key']}: {show(change['old'])} -> {show(change['new'])}"


def _stage_of(config: Path) -> tuple[str, str] | None:
    """(profile, stage) when `config` is a rendered stage config, axolotl_configs/<profile>/<stage>.yml."""
    path = config.resolve()
    if path.parent.parent == RENDERED.resolve() and path.parent.name in profile_names() \
            and path.stem in load_stages():
        return path.parent.name, path.stem
    return None


def config_changes(config: Path | None, text: str | None) -> tuple[str | None, list[dict] | None]:
    """What a run's config changed and against what: an experiment copy against the config its
    header says it was copied from (output_dir and run name left out), a stage config against a
    fresh render of templates/. (None, None) when neither applies."""
    if text is None:
        return None, None
    trained = yaml.safe_load(text)
    source = copied_from(text)
    if source:
        path = in_repo(source)
        if not path.is_file():
            return f"{source} (no longer there)", None
        return relative(path), config_diff(load_yaml(path), trained, skip=SET_BY_COPY)
    stage = _stage_of(config) if config else None
    if stage:
        return "template render", config_diff(yaml.safe_load(render_stage(*stage)), trained)
    return None, None


def read_debug_log(folder: Path) -> tuple[Path | None, str | None]:
    """The config the last Axolotl command in `folder` loaded, and the exception that ended that
    command if one did (Axolotl mirrors stdout and stderr into debug.log, tracebacks included;
    Ctrl-C is an interruption, not a failure)."""
    log = folder / "debug.log"
    config, error, in_traceback = None, None, False
    if not log.is_file():
        return config, error
    with log.open(encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if match := CONFIG_PATH.search(line):
                config, error, in_traceback = in_repo(json.loads(match.group(1))), None, False
            elif line.startswith("Traceback (most recent call last)"):
                in_traceback = True
            elif in_traceback and EXCEPTION.match(line):
                error = line.strip()
    return config, None if error and error.startswith("KeyboardInterrupt") else error


def trained_text(folder: Path, config: Path | None) -> str | None:
    """The config text the run trained: the copy in Axolotl's model card once it finished (the
    file may have been edited since), else the file as it is now."""
    card = folder / "README.md"
    if card.is_file() and (match := MODEL_CARD_CONFIG.search(card.read_text(encoding="utf-8", errors="replace"))):
        return match.group(1)
    return config.read_text(encoding="utf-8") if config and config.is_file() else None


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.rpartition("-")[2])


def last_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint: the Trainer writes trainer_state.json after the weights."""
    done = [p.parent for p in folder.glob("checkpoint-*/trainer_state.json") if p.parent.name[11:].isdigit()]
    return max(done, key=_step_of, default=None)


def run_status(folder: Path) -> tuple[str, str, Path | None]:
    """(status, detail, last checkpoint) of a run folder."""
    if not folder.is_dir():
        return "not started", "", None
    checkpoint = last_checkpoint(folder)
    if finished_run(folder):
        return "finished", "", checkpoint
    error = read_debug_log(folder)[1]
    if error:
        return "failed", error, checkpoint
    return "interrupted", checkpoint.name if checkpoint else "no checkpoint", checkpoint


def _tensorboard_sessions(folder: Path) -> list[tuple[dict[int, dict], float]]:
    """Per training session (one event file each, oldest first): the logged values by step with
    trainer_state's key names, and the session's seconds (its train_runtime, or for a session
    that was cut short, the time between its first and last event)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util.tensor_util import make_ndarray

    sessions = []
    for path in folder.glob("runs/*/events.out.tfevents.*"):
        points: dict[int, dict] = {}
        walls, runtime = [], None
        for event in EventFileLoader(str(path)).Load():
            if event.summary.value:  # the file's own version record is not part of training
                walls.append(event.wall_time)
            for value in event.summary.value:
                tag = value.tag
                if value.metadata.plugin_data.plugin_name != "scalars" or not tag.startswith(("train/", "eval/")):
                    continue
                # The Trainer's tensorboard callback renamed `eval_loss` to eval/loss and `loss` to train/loss.
                key = "eval_" + tag[5:] if tag.startswith("eval/") else tag[6:]
                points.setdefault(event.step, {})[key] = float(make_ndarray(value.tensor))
                if key == "train_runtime":
                    runtime = points[event.step][key]
        if walls:
            sessions.append((min(walls), points, runtime if runtime is not None else max(walls) - min(walls)))
    return [(points, seconds) for _, points, seconds in sorted(sessions, key=lambda s: s[0])]


def read_history(folder: Path) -> tuple[dict[int, dict], list[float], int | None]:
    """Every logged value by step, each session's seconds, and the Trainer's max_steps. A resumed
    run logs again the steps after its checkpoint: the later session's values win."""
    states = [json.loads(p.read_text(encoding="utf-8")) for p in
              [folder / "trainer_state.json", *folder.glob("checkpoint-*/trainer_state.json")] if p.is_file()]
    state = max(states, key=lambda s: s.get("global_step", 0), default={})
    points: dict[int, dict] = {}
    for entry in state.get("log_history", []):
        points.setdefault(entry["step"], {}).update(entry)
    seconds = []
    for session_points, session_seconds in _tensorboard_sessions(folder):
        for step, values in session_points.items():
            points.setdefault(step, {}).update(values)
        seconds.append(session_seconds)
    return points, seconds, state.get("max_steps")


def read_evals(work: Path) -> list[dict]:
    """Every `make eval` summary under <work>/eval, newest first, with its model folder."""
    evals = []
    for path in (work / "eval").glob("*/summary.json"):
        summary = json.loads(path.read_text(encoding="utf-8"))
        if "verdict" not in summary:  # a baseline's scores, not an evaluation of its own
            continue
        scores = {r["task"]: r["score"] for r in summary["rows"] if r.get("score") is not None}
        evals.append({"name": path.parent.name, "folder": relative(path.parent), "verdict": summary["verdict"],
                      "mean_score": sum(scores.values()) / len(scores) if scores else None,
                      "tasks_scored": len(scores), "tasks": len(summary["rows"]), "scores": scores,
                      "model": in_repo(summary["model"]).resolve(), "mtime": path.stat().st_mtime})
    return sorted(evals, key=lambda e: -e["mtime"])


def read_run(folder: Path, work: Path, evals: list[dict], config: Path | None = None) -> Run:
    """One run folder's row. `config`: the config that trains into it, when the caller knows
    (a sweep's runs that have not started have no debug.log to name it)."""
    logged_config, _ = read_debug_log(folder)
    config = logged_config or config
    against, changes = config_changes(config, trained_text(folder, config))
    status, detail, checkpoint = run_status(folder)
    points, seconds, max_steps = read_history(folder)
    if max_steps is None and config and config.is_file():
        max_steps = (load_yaml(config) or {}).get("max_steps")
    train = [(step, v["loss"]) for step, v in sorted(points.items()) if "loss" in v]
    evals_logged = [(step, v["eval_loss"]) for step, v in sorted(points.items()) if "eval_loss" in v]
    best = min(evals_logged, key=lambda p: p[1], default=(None, None))
    tokens = [v["tokens/total"] for _, v in sorted(points.items()) if "tokens/total" in v]
    train_seconds = sum(seconds) if seconds else None
    resolved = folder.resolve()
    scored = next((e for e in evals if e["model"] == resolved or resolved in e["model"].parents), None)
    return Run(
        name=str(folder.relative_to(work)) if folder.is_relative_to(work) else str(folder),
        folder=folder, config=config, against=against, changes=changes,
        status=status, detail=detail, checkpoint=checkpoint,
        step=max(points, default=None), max_steps=max_steps,
        train_seconds=train_seconds, session_seconds=seconds,
        tokens_per_second=tokens[-1] / train_seconds if tokens and train_seconds else None,
        final_train_loss=train[-1][1] if train else None, best_eval_loss=best[1], best_eval_step=best[0],
        eval={k: v for k, v in scored.items() if k not in ("model", "mtime")} if scored else None,
        train_curve=train, eval_curve=evals_logged,
    )


def find_runs(work: Path, skip: Path | None = None) -> list[Path]:
    """Folders under `work` that Axolotl trained (or started to) into: each has a debug.log or a
    checkpoint. Reports under `skip` are left out."""
    found = {p.parent for p in work.rglob("debug.log")} | {
        p.parent.parent for p in work.rglob("checkpoint-*/trainer_state.json")}
    return sorted(f for f in found if not (skip and f.resolve().is_relative_to(skip.resolve())))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _changes_cell(run: Run) -> str:
    if run.changes is None:
        return "-" if run.against is None else run.against
    text = "; ".join(format_change(c) for c in run.changes)
    if run.against == "template render":
        return f"vs render: {text}" if text else "as rendered"
    return text or "none"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(runs: list[Run]) -> str:
    header = ["run", "config", "changed", "status", "steps", "train time", "tokens/s", "final train loss",
              "best eval loss (step)", "eval suite"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for run in runs:
        status = run.status + (f" ({run.detail[:100]})" if run.detail else "")
        steps = "-" if run.step is None else f"{run.step}/{run.max_steps}" if run.max_steps else str(run.step)
        best = "-" if run.best_eval_loss is None else f"{run.best_eval_loss:.4f} ({run.best_eval_step})"
        scored = run.eval
        suite = "-" if not scored else (
            f"{scored['name']}: {_number(scored['mean_score'], 3)} ({scored['tasks_scored']}/{scored['tasks']} tasks) "
            f"{scored['verdict']}")
        cells = [run.name, relative(run.config) if run.config else "-", _changes_cell(run), status, steps,
                 duration(run.train_seconds), _number(run.tokens_per_second, 0), _number(run.final_train_loss),
                 best, suite]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_plot(runs: list[Run], target: Path) -> bool:
    """The train and eval loss curves of `runs` overlaid, one colour per run; False when no run
    logged a loss (then no file is written)."""
    plotted = [run for run in runs if run.train_curve or run.eval_curve]
    if not plotted:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    handles = []
    for index, run in enumerate(plotted):
        color = f"C{index % 10}"
        if run.train_curve:
            train_ax.plot(*zip(*run.train_curve), color=color, linewidth=1.2)
        if run.eval_curve:
            eval_ax.plot(*zip(*run.eval_curve), color=color, marker="o", markersize=3, linewidth=1.2)
        handles.append(Line2D([], [], color=color, label=run.name))
    for ax, title in ((train_ax, "train loss"), (eval_ax, "eval loss")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    fig.tight_layout()
    with atomic_path(target, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def write_report(runs: list[Run], out: Path, title: str, started: float, parameters: dict) -> str:
    """Write experiments.md, experiments.json, losses.png and manifest.json into `out` (other
    files there, such as a sweep's report folder, are left alone); return the table."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(runs)
    plotted = write_plot(runs, out / "losses.png")
    if not plotted:
        (out / "losses.png").unlink(missing_ok=True)
    counts = {s: sum(r.status == s for r in runs) for s in ("finished", "interrupted", "failed", "not started")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    markdown = (f"# {title}\n\n{len(runs)} run(s){': ' + summary if summary else ''}.\n\n{table}\n"
                "`changed`: an experiment copy against the config it was copied from (output_dir and wandb_name, "
                "which every copy sets, left out); a stage run against a fresh render of templates/. Steps, time "
                "(training, summed over sessions), tokens/s (tokens/total over that time) and losses come from "
                "each run's tensorboard events and checkpoints; `eval suite` is the newest `make eval` of a model "
                "in the run folder (mean score of the tasks that ran, and the verdict).\n\n"
                + ("![train and eval loss](losses.png)\n" if plotted else "No run has logged a loss yet.\n"))
    write_text_atomic(out / "experiments.md", markdown)

    def jsonable(run: Run) -> dict:
        row = asdict(run)
        for key in ("folder", "config", "checkpoint"):
            row[key] = relative(row[key]) if row[key] else None
        return row

    write_text_atomic(out / "experiments.json", json.dumps({"title": title, "runs": [jsonable(r) for r in runs]},
                                                           indent=2, default=str) + "\n")
    write_manifest(out, "experiments", {}, parameters, {"runs": len(runs), **counts}, started)
    return table


def report(work: Path, out: Path, match: str | None = None) -> tuple[list[Run], str]:
    """The table of every run under `work` (those whose name matches the glob `match`), written to `out`."""
    started = time.time()
    evals = read_evals(work)
    runs = [read_run(folder, work, evals) for folder in find_runs(work, skip=out)]
    runs = [run for run in runs if match is None or fnmatch.fnmatch(run.name, match)]
    title = f"Training runs under {relative(work)}" + (f" matching `{match}`" if match else "")
    table = write_report(runs, out, title, started, {"work": work, "match": match, "runs": [r.name for r in runs]})
    return runs, table


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.train.experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="a profile's work folder, e.g. work/tiny")
    parser.add_argument("--out", type=Path, required=True, help="report folder (e.g. work/tiny/experiments_report)")
    parser.add_argument("--match", help="only runs whose name (folder under --work) matches this glob, e.g. 'experiments/*'")
    args = parser.parse_args(argv)
    runs, table = report(args.work, args.out, args.match)
    print(table if runs else f"no training runs under {args.work}" + (f" matching {args.match!r}" if args.match else ""))
    print(f"written: {', '.join(str(args.out / f) for f in REPORT_FILES if (args.out / f).exists())}")


if __name__ == "__main__":
    run_cli(main)
