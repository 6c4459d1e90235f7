"""Check an Axolotl config before it runs: Axolotl's own schema validation, plus the
mistakes Axolotl lets through silently (unknown keys such as `learning_rat`), missing
dataset/model paths, a GPU-only config on a machine without CUDA, and an output folder
that already holds a finished run.
"""

from __future__ import annotations

import argparse
import difflib
import shutil
from pathlib import Path

import yaml

from glue.core.io import UserError, load_yaml, require_file, run_cli

# Which make target writes a stage's input, for the "file not found" hint.
PRODUCERS = {"/1c_distill_data/": "make distill-1c", "/data/": "make data"}


def key_lines(path: Path) -> dict[tuple, int]:
    """Line number of every top-level key and of every key inside dataset entries."""
    root = yaml.compose(path.read_text(encoding="utf-8"))
    lines: dict[tuple, int] = {}
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        lines[(key_node.value,)] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.SequenceNode):
            for index, item in enumerate(value_node.value):
                if isinstance(item, yaml.MappingNode):
                    for sub_key, _ in item.value:
                        lines[(key_node.value, index, sub_key.value)] = sub_key.start_mark.line + 1
    return lines


def _accepted(model) -> set[str]:
    return {name for name in model.model_fields} | {
        field.alias for field in model.model_fields.values() if field.alias
    }


def load_config(path: str | Path) -> dict:
    path = require_file(path, "config file", "render one with `make render` or copy one with `make new-experiment`")
    cfg = load_yaml(path)
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: expected a mapping of Axolotl options, got {type(cfg).__name__}")
    return cfg


def unknown_keys(path: Path, cfg: dict) -> list[str]:
    """Keys Axolotl's schema does not know, as `file:line: ...` messages with a suggestion."""
    from axolotl.utils.schemas.config import AxolotlInputConfig
    from axolotl.utils.schemas.datasets import SFTDataset

    top, dataset = _accepted(AxolotlInputConfig), _accepted(SFTDataset)
    lines = key_lines(path)
    problems = []

    def report(key_path: tuple, known: set[str]) -> None:
        key = key_path[-1]
        hint = difflib.get_close_matches(key, known, n=1)
        where = ".".join(str(k) for k in key_path)
        problems.append(f"{path}:{lines.get(key_path, '?')}: unknown key `{where}`"
                        + (f" (did you mean `{hint[0]}`?)" if hint else " (not an Axolotl option)"))

    for key, value in cfg.items():
        if key not in top:
            report((key,), top)
        elif key in ("datasets", "test_datasets") and isinstance(value, list):
            for index, entry in enumerate(value):
                for sub_key in entry if isinstance(entry, dict) else ():
                    if sub_key not in dataset:
                        report((key, index, sub_key), dataset)
    return problems


def schema_errors(path: Path, cfg: dict) -> list[str]:
    """Axolotl's own pydantic validation of the config."""
    import pydantic
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    try:
        validate_config(DictDefault(dict(cfg)))
    except pydantic.ValidationError as exc:
        lines = key_lines(path)
        return [f"{path}:{lines.get((str(err['loc'][0]),), '?') if err['loc'] else '?'}: "
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()]
    except ValueError as exc:
        return [f"{path}: {exc}"]
    return []


def _is_local(name: str) -> bool:
    """Hub ids look like `org/name`; anything else (or an existing folder) is a local path."""
    return Path(name).exists() or name.startswith((".", "/", "work/")) or name.count("/") != 1


def missing_paths(path: Path, cfg: dict) -> list[str]:
    problems = []
    base = str(cfg.get("base_model", ""))
    if base and _is_local(base) and not Path(base).is_dir():
        hint = ("merge the previous stage first, e.g. `make merge-1a`" if base.rstrip("/").endswith("merged")
                else "build it with `make tiny-model`" if "tiny" in base
                else "check base_model, or use a hub id such as meta-llama/Llama-3.1-8B-Instruct")
        problems.append(f"{path}: base_model folder not found: {base} ({hint})")
    for key in ("datasets", "test_datasets"):
        for entry in cfg.get(key) or []:
            data = str(entry.get("path", ""))
            if entry.get("ds_type") == "json" and not Path(data).exists():
                producer = next((make for part, make in PRODUCERS.items() if part in data), None)
                hint = f"run `{producer}` first" if producer else "check the path"
                problems.append(f"{path}: {key} file not found: {data} ({hint})")
    deepspeed = cfg.get("deepspeed")
    if deepspeed and not Path(deepspeed).is_file():
        problems.append(f"{path}: deepspeed config not found: {deepspeed}")
    return problems


def hardware_problems(path: Path, cfg: dict) -> list[str]:
    import torch

    if torch.cuda.is_available():
        return []
    gpu_only = [k for k in ("bf16", "tf32") if cfg.get(k) is True]
    if str(cfg.get("attn_implementation", "")).startswith("flash_attention") or cfg.get("flash_attention"):
        gpu_only.append("attn_implementation: flash_attention_2")
    if gpu_only:
        return [f"{path}: needs a CUDA GPU ({', '.join(gpu_only)}) and this machine has none: "
                "use PROFILE=tiny on CPU, or run on a GPU host"]
    return []


def finished_run(output_dir: str | Path) -> bool:
    """A run is finished when Axolotl has written the final adapter (checkpoints alone mean
    an interrupted run, which `auto_resume_from_checkpoints` continues)."""
    return (Path(output_dir) / "adapter_config.json").is_file()


def prepare_output(cfg: dict, output_dir: str | None, overwrite: bool) -> Path:
    out = Path(output_dir or cfg.get("output_dir") or "")
    if not str(out):
        raise UserError("the config has no output_dir")
    if finished_run(out):
        if not overwrite:
            raise UserError(f"{out} already holds a finished run: merge it (`make merge`), train into "
                            "another folder (RUN=<dir>), or replace it with OVERWRITE=1")
        shutil.rmtree(out)
    return out


def validate(path: str | Path, for_training: bool = False) -> dict:
    """Raise UserError listing every problem found; return the parsed config."""
    path = Path(path)
    cfg = load_config(path)
    problems = unknown_keys(path, cfg) + schema_errors(path, cfg)
    if for_training:
        problems += missing_paths(path, cfg) + hardware_problems(path, cfg)
    if problems:
        raise UserError(f"{path} is not valid ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    return cfg


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.train.validate_config", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="Axolotl YAML file(s)")
    parser.add_argument("--for-training", action="store_true",
                        help="also check paths, hardware and the output folder, as `make train` does")
    parser.add_argument("--output-dir", help="where training will write (default: the config's output_dir)")
    parser.add_argument("--overwrite", action="store_true", help="remove a finished run in the output folder")
    args = parser.parse_args(argv)
    for path in args.configs:
        cfg = validate(path, for_training=args.for_training)
        if args.for_training:
            prepare_output(cfg, args.output_dir, args.overwrite)
        print(f"ok: {path}")


if __name__ == "__main__":
    run_cli(main)
