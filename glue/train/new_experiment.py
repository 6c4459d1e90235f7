"""Copy an Axolotl config into a new experiment: axolotl_configs/experiments/<name>.yml,
with its own output_dir and run name, so two experiments never write into one folder.
The copy keeps every line and comment of the original; only those two values change, and any
keys a caller sets (`make sweep` writes each combination's values this way).
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import yaml

from glue.core.io import UserError, run_cli, write_text_atomic
from glue.core.paths import ROOT
from glue.train.render import yaml_scalar
from glue.train.validate_config import load_config

EXPERIMENTS = ROOT / "axolotl_configs" / "experiments"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The first line of every copy; `copied_from` reads it back (the experiments table diffs against it).
HEADER = "# Experiment `{name}`: copied from {source} by `{made_by}` on {date}.\n"
COPIED_FROM = re.compile(r"^# Experiment `[^`]+`: copied from (.+?) by `make [a-z-]+` on ", re.MULTILINE)


def _set_key(text: str, key: str, value: str, comment: str | None = None) -> str:
    """Replace a top-level `key: ...` line or append one. A trailing comment is kept unless
    `comment` replaces it or it is a rendered file's provenance (`# templates/...`), which no
    longer holds for the new value."""
    match = re.search(rf"^{re.escape(key)}:[^#\n]*(#.*)?$", text, re.MULTILINE)
    kept = match and match.group(1) and not match.group(1).startswith("# templates/") and match.group(1)
    trailing = f"# {comment}" if comment else kept
    line = f"{key}: {value}" + (f"  {trailing}" if trailing else "")
    if match:
        return text[:match.start()] + line + text[match.end():]
    return text.rstrip("\n") + f"\n{line}\n"


def copied_from(text: str) -> str | None:
    """The config an experiment copy's header says it was copied from (None: not a copy)."""
    match = COPIED_FROM.search(text)
    return match.group(1) if match else None


def display_path(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def experiment_output_dir(source_output_dir: str, name: str) -> str:
    parent = Path(source_output_dir).parent
    if parent.name != "experiments":
        parent = parent / "experiments"
    return str(parent / name)


def output_dirs_in_use(root: Path, exclude: Path) -> dict[str, Path]:
    used = {}
    for path in root.rglob("*.yml"):
        if path.resolve() == exclude.resolve():
            continue
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            continue
        if isinstance(cfg, dict) and cfg.get("output_dir"):
            used[str(Path(cfg["output_dir"]))] = path
    return used


def new_experiment(source: str | Path, name: str, dest_root: Path = EXPERIMENTS, overwrite: bool = False,
                   changes: dict[str, str] | None = None, made_by: str = "make new-experiment") -> Path:
    """Write the copy; `changes` maps top-level keys to YAML values written into it, each line
    saying what the source had, so the file stays the record of what was changed."""
    source = Path(source)
    if not NAME.match(name or ""):
        raise UserError(f"experiment name {name!r} must be letters, digits, `_`, `.` or `-` (e.g. 1a_lr1e-4)")
    cfg = load_config(source)
    if "output_dir" not in cfg:
        raise UserError(f"{source}: has no output_dir to rewrite")
    target = dest_root / f"{name}.yml"
    shown = display_path(target)
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists: pick another NAME, or edit that file")
    output_dir = experiment_output_dir(str(cfg["output_dir"]), name)
    clash = output_dirs_in_use(dest_root.parent, target).get(output_dir)
    if clash:
        raise UserError(f"{clash} already writes to {output_dir}: pick another NAME")

    # The source's leading comment block says how it was made ("rendered by ..."): replace it.
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    header = (HEADER.format(name=name, source=source, made_by=made_by, date=time.strftime('%Y-%m-%d'))
              + (f"# Set by `{made_by}`: {', '.join(changes)} (each line says what the source had).\n"
                 if changes else "")
              + f"# Edit freely; train it with `make train CONFIG={shown}`.\n")
    text = _set_key(_set_key("".join(lines), "output_dir", output_dir), "wandb_name", name)
    for key, value in (changes or {}).items():
        was = f"was {yaml_scalar(cfg[key])}" if key in cfg else "not set"
        text = _set_key(text, key, value, comment=f"{made_by}; {was} in {source.name}")
    write_text_atomic(target, header + text)
    return target


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.train.new_experiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="config to copy (rendered or another experiment)")
    parser.add_argument("name", help="experiment name: the file name and the run folder's name")
    parser.add_argument("--dest", type=Path, default=EXPERIMENTS, help="folder for the copy")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    target = new_experiment(args.source, args.name, args.dest, args.overwrite)
    cfg = yaml.safe_load(target.read_text(encoding="utf-8"))
    print(f"new experiment: {target}\n  output_dir: {cfg['output_dir']}\n  train it: make train CONFIG={display_path(target)}")


if __name__ == "__main__":
    run_cli(main)
