"""Copy an Axolotl config into a new experiment: axolotl_configs/experiments/<name>.yml,
with its own output_dir and run name, so two experiments never write into one folder.
The copy keeps every line and comment of the original; only those two values change.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import yaml

from glue.core.io import UserError, run_cli, write_text_atomic
from glue.core.paths import ROOT
from glue.train.validate_config import load_config

EXPERIMENTS = ROOT / "axolotl_configs" / "experiments"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _set_key(text: str, key: str, value: str) -> str:
    """Replace a top-level `key: ...` line (keeping a trailing comment) or append one."""
    pattern = re.compile(rf"^{re.escape(key)}:[^#\n]*(#.*)?$", re.MULTILINE)
    line = f"{key}: {value}"
    if pattern.search(text):
        return pattern.sub(lambda m: line + (f"  {m.group(1)}" if m.group(1) else ""), text, count=1)
    return text.rstrip("\n") + f"\n{line}\n"


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


def new_experiment(source: str | Path, name: str, dest_root: Path = EXPERIMENTS, overwrite: bool = False) -> Path:
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
    header = (f"# Experiment `{name}`: copied from {source} by `make new-experiment` on "
              f"{time.strftime('%Y-%m-%d')}.\n# Edit freely; train it with `make train CONFIG={shown}`.\n")
    text = _set_key(_set_key("".join(lines), "output_dir", output_dir), "wandb_name", name)
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
