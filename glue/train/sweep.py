"""`make sweep`: one experiment copy per combination of values, trained one after another.

`python -m glue.train.sweep FROM --set "learning_rate=1e-4,2e-4 lora_r=16,32"` makes each copy with
new_experiment (its own output_dir and run name, the set keys written into the file, each line
saying what FROM had) and validates every copy as `make train` does before anything trains: a
misspelt key is refused with its did-you-mean and no copy is left behind. Runs then train in
turn with `axolotl preprocess` and `axolotl train`. Rerunning the same command continues: a
finished run is skipped, an interrupted one resumes from its last checkpoint, a failed one is
tried again. After the first run it trains, it prints the time the rest are expected to take;
it ends with the experiments table of the sweep's runs (`make experiments`, for these runs only).
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from glue.core.io import UserError, run_cli
from glue.train.experiments import (SET_BY_COPY, Run, config_diff, duration, format_change, read_evals, read_run,
                                    run_status, trained_text, write_report)
from glue.train.new_experiment import EXPERIMENTS, experiment_output_dir, new_experiment
from glue.train.render import yaml_scalar
from glue.train.validate_config import load_config, validate

MADE_BY = "make sweep"
UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass
class Planned:
    name: str
    config: Path
    folder: Path
    changes: dict[str, str]  # key -> YAML text written into the copy
    status: str  # of the run folder when the sweep looked: finished, interrupted, failed, not started
    checkpoint: Path | None  # what an interrupted run resumes from


def parse_set(text: str) -> dict[str, list[str]]:
    """`key=v1,v2 key=v1` -> {key: [v1, v2], key: [v1]}."""
    grid: dict[str, list[str]] = {}
    for item in text.split():
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise UserError(f"SET: `{item}` is not key=value[,value...] (e.g. SET=\"learning_rate=1e-4,2e-4 lora_r=16\")")
        if key in SET_BY_COPY:
            raise UserError(f"SET: {key} is set by the sweep itself (each run gets its own)")
        if "." in key:
            raise UserError(f"SET: {key}: only top-level keys can be swept")
        if key in grid:
            raise UserError(f"SET names {key} twice")
        listed = values.split(",")
        if "" in listed or len(set(listed)) != len(listed):
            raise UserError(f"SET: `{item}` has an empty or repeated value")
        grid[key] = listed
    if not grid:
        raise UserError("SET is empty: give key=value[,value...] pairs, e.g. SET=\"learning_rate=1e-4,2e-4\"")
    return grid


def value_text(raw: str) -> str:
    """A SET value as YAML text that loads as the number it looks like: YAML 1.1 reads `1e-4` as a
    string, which is not what anyone sweeping a learning rate means."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            value = float(raw)
        except ValueError:
            pass
    return yaml_scalar(value)


def combinations(prefix: str, grid: dict[str, list[str]]) -> list[tuple[str, dict[str, str]]]:
    """(copy name, {key: YAML text}) per combination; the name spells each value as given."""
    named = []
    for values in itertools.product(*grid.values()):
        name = ".".join([prefix, *(f"{key}-{UNSAFE.sub('_', raw)}" for key, raw in zip(grid, values))])
        named.append((name, {key: value_text(raw) for key, raw in zip(grid, values)}))
    names = [name for name, _ in named]
    if len(set(names)) != len(names):
        raise UserError(f"SET values that differ only in characters a file name cannot hold give the same run name: "
                        f"{sorted({n for n in names if names.count(n) > 1})}")
    return named


def _expected_config(source_cfg: dict, name: str, changes: dict[str, str]) -> dict:
    """What new_experiment writes for this combination, as loaded YAML."""
    return {**source_cfg, "output_dir": experiment_output_dir(str(source_cfg["output_dir"]), name),
            "wandb_name": yaml.safe_load(name), **{k: yaml.safe_load(v) for k, v in changes.items()}}


def make_copies(source: Path, prefix: str, grid: dict[str, list[str]], dest: Path) -> list[Planned]:
    """Every combination's copy (an existing one is kept if it is what this sweep would write),
    all validated for training; on any problem, the copies made here are removed again."""
    source_cfg = load_config(source)
    created, planned, problems = [], [], []
    try:
        for name, changes in combinations(prefix, grid):
            target = dest / f"{name}.yml"
            if target.exists():
                differs = config_diff(_expected_config(source_cfg, name, changes), load_config(target))
                if differs:
                    raise UserError(f"{target} exists but is not this sweep's copy ({'; '.join(map(format_change, differs))}): "
                                    "FROM or the copy changed since; sweep under another name (SWEEP=...) or delete it")
            else:
                target = new_experiment(source, name, dest, changes=changes, made_by=MADE_BY)
                created.append(target)
            planned.append(Planned(name, target, Path(load_config(target)["output_dir"]), changes, "", None))
        for run in planned:
            try:
                validate(run.config, for_training=True)
            except UserError as exc:
                problems.append(str(exc))
        if problems:
            raise UserError("the sweep's copies are not valid, nothing was trained and no copy is kept:\n"
                            + "\n".join(problems))
    except BaseException:
        for target in created:
            target.unlink(missing_ok=True)
        raise
    return planned


def check_runs(planned: list[Planned]) -> None:
    """Fill in each run folder's status; a finished run must have trained its copy as it is now."""
    for run in planned:
        run.status, _, run.checkpoint = run_status(run.folder)
        if run.status == "finished":
            differs = config_diff(yaml.safe_load(trained_text(run.folder, run.config) or "{}"), load_config(run.config))
            if differs:
                raise UserError(f"{run.folder} holds a finished run of another config "
                                f"({'; '.join(map(format_change, differs))}): move it away, or sweep under another "
                                "name (SWEEP=...)")


def axolotl_train(config: Path, resume: Path | None) -> int:
    """Train one copy as `make train` does (preprocess, then train; validated already), from
    `resume` when given. The exit status of the first command that fails, else 0."""
    # `axolotl train` launches `accelerate` by name: this environment's bin goes first on PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    for command in (["axolotl", "preprocess", str(config)],
                    ["axolotl", "train", str(config), *([f"--resume-from-checkpoint={resume}"] if resume else [])]):
        print("$ " + " ".join(command), flush=True)
        status = subprocess.run(command, env=env).returncode
        if status:
            return status
    return 0


def remaining_estimate(first: Run, start_step: int, elapsed: float, rest: list[Planned]) -> float:
    """Seconds the runs in `rest` are expected to take, from the first run trained now: its time
    outside training (loading, preprocessing) once per run, plus its seconds per step times each
    run's steps still to do (a run without max_steps is assumed as long as the first)."""
    steps_now = max((first.step or 0) - start_step, 1)
    training = min(first.session_seconds[-1] if first.session_seconds else elapsed, elapsed)
    per_step, overhead = training / steps_now, elapsed - training
    total = 0.0
    for run in rest:
        steps = load_config(run.config).get("max_steps") or first.max_steps or steps_now
        done = int(run.checkpoint.name.rpartition("-")[2]) if run.checkpoint else 0
        total += overhead + per_step * max(steps - done, 0)
    return total


def sweep(source: str | Path, set_text: str, prefix: str | None = None, dest: Path = EXPERIMENTS,
          train: Callable[[Path, Path | None], int] = axolotl_train) -> tuple[list[Run], Path]:
    """Make, validate and train the sweep's runs; return their table rows and the report folder."""
    started = time.time()
    source = Path(source)
    grid = parse_set(set_text)
    prefix = prefix or source.stem
    planned = make_copies(source, prefix, grid, dest)
    check_runs(planned)
    work = planned[0].folder.parent.parent  # new_experiment puts every run in <work>/experiments/<name>
    out = work / "experiments_report" / f"sweep_{prefix}"

    todo = [run for run in planned if run.status != "finished"]
    sizes = " x ".join(f"{key} ({len(values)})" for key, values in grid.items())
    resuming = sum(run.checkpoint is not None for run in todo)
    print(f"sweep {prefix}: {len(planned)} runs ({sizes}) from {source}; {len(planned) - len(todo)} finished "
          f"(skipped), {resuming} to resume, {len(todo) - resuming} to train from the start", flush=True)

    failed = []
    measured = False
    for index, run in enumerate(todo):
        what = f"resuming from {run.checkpoint.name}" if run.checkpoint else "training"
        print(f"\n[{index + 1}/{len(todo)}] {run.name}: {what} ({', '.join(f'{k}={v}' for k, v in run.changes.items())})",
              flush=True)
        start_step = int(run.checkpoint.name.rpartition("-")[2]) if run.checkpoint else 0
        begun = time.time()
        status = train(run.config, run.checkpoint)
        elapsed = time.time() - begun
        if status:
            failed.append(f"{run.name} (exit status {status})")
            print(f"[{index + 1}/{len(todo)}] {run.name} failed (exit status {status}); going on with the next",
                  flush=True)
            continue
        rest = todo[index + 1:]
        if not measured and rest:
            measured = True
            first = read_run(run.folder, work, [], run.config)
            expected = remaining_estimate(first, start_step, elapsed, rest)
            print(f"\nfirst run: {duration(elapsed)} ({(first.step or 0) - start_step} steps); "
                  f"{len(rest)} more to train: expected {duration(expected)} more, "
                  f"{duration(time.time() - started + expected)} for the whole sweep "
                  f"(done about {time.strftime('%H:%M', time.localtime(time.time() + expected))})", flush=True)

    evals = read_evals(work)
    runs = [read_run(run.folder, work, evals, run.config) for run in planned]
    table = write_report(runs, out, f"Sweep {prefix}: {set_text} from {source}", started,
                         {"from": source, "set": set_text, "runs": [r.name for r in runs]})
    print(f"\n{table}\nwritten: {out}/experiments.md, experiments.json, losses.png")
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)}; their output is in debug.log in each "
                        "run folder. Rerun the same command after a fix: finished runs are skipped")
    return runs, out


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.train.sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="config to copy (rendered or an experiment)")
    parser.add_argument("--set", required=True, dest="set_text", metavar="SET",
                        help='values to try: "key=v1,v2 key=v1,v2" (top-level Axolotl keys; every combination runs)')
    parser.add_argument("--name", help="the copies' name prefix (default: the source's file name)")
    parser.add_argument("--dest", type=Path, default=EXPERIMENTS, help="folder for the copies")
    args = parser.parse_args(argv)
    try:
        sweep(args.source, args.set_text, args.name, args.dest)
    except KeyboardInterrupt:
        print("\nsweep interrupted: rerun the same command to go on (finished runs are skipped, the interrupted "
              "one resumes from its last checkpoint)", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run_cli(main)
