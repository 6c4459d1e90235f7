"""Check an Axolotl config before it runs: Axolotl's own schema validation, plus the
mistakes Axolotl lets through silently (unknown keys such as `learning_rat`), missing
dataset/model paths, a GPU-only config on a machine without CUDA, and an output folder
that already holds a finished run.

The schema is the one Axolotl builds for the config: the base options, the options of the
plugins it lists, and for each dataset entry the dataset model its training type is read as.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import difflib
import functools
import importlib
import inspect
import pkgutil
import re
import shutil
import sys
from pathlib import Path

import yaml

from glue.core.checkpoints import finished_run
from glue.core.io import UserError, load_yaml, require_file, run_cli

# Which make target writes a stage's input, for the "file not found" hint.
PRODUCERS = {"/modifiers/": "make modifier-data DOMAIN=<domain>", "/1c_distill_data/": "make distill-1c",
             "/data/": "make data"}
# Packages that build against CUDA and so are installed on GPU hosts only.
GPU_ONLY = {"flash_attn", "ring_flash_attn", "deep_ep", "mamba_ssm", "causal_conv1d"}


class Note(str):
    """A finding that leaves the config valid; printed as `note: ...`."""


class MachineLimit(Note):
    """Something this machine lacks (a package), not a fault of the config: a note for a plain
    check, a problem for --for-training, because training runs on this machine."""


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


def load_plugins(cfg: dict) -> tuple[dict, dict[str, Exception]]:
    """The config's plugins loaded with Axolotl's own loader, and those that failed with why.
    Their `register(cfg)` hook is not called: it acts (sets environment variables, clones and
    starts the NeMo Gym servers), which a check must not do."""
    from axolotl.integrations.base import load_plugin

    loaded, failed = {}, {}
    for name in cfg.get("plugins") or []:
        try:
            loaded[str(name)] = load_plugin(str(name))
        except (ImportError, AttributeError, ValueError) as exc:  # no such module, class, or no dot
            failed[str(name)] = exc
    return loaded, failed


@contextlib.contextmanager
def plugins_registered(plugins: dict):
    """Axolotl builds the schema from its PluginManager singleton, which keeps every plugin ever
    registered in the process; while this is open it holds exactly `plugins`."""
    from axolotl.integrations.base import PluginManager

    manager = PluginManager.get_instance()
    saved, manager.plugins = manager.plugins, collections.OrderedDict(plugins)
    try:
        yield
    finally:
        manager.plugins = saved


def input_model(plugins: dict):
    """Axolotl's input model extended with the options of `plugins`, as Axolotl extends it."""
    from axolotl.integrations.config import merge_input_args

    with plugins_registered(plugins):
        return merge_input_args()[1]


@functools.cache
def shipped_plugins() -> dict[str, set[str]]:
    """Every plugin that ships with Axolotl and loads here, with the options it adds."""
    import axolotl.integrations
    from axolotl.integrations.base import BasePlugin, load_plugin

    base = _accepted(input_model({}))
    plugins = {}
    for package in pkgutil.iter_modules(axolotl.integrations.__path__, "axolotl.integrations."):
        if not package.ispkg:
            continue
        try:
            module = importlib.import_module(package.name)
        except ImportError:
            continue  # its dependencies are not installed here, so its options cannot be read
        for class_name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, BasePlugin) and cls is not BasePlugin:
                name = f"{package.name}.{class_name}"
                plugins[name] = _accepted(input_model({name: load_plugin(name)})) - base
    return plugins


def _plugin_label(name: str) -> str:
    return name.rsplit(".", 1)[-1].removesuffix("Plugin")


def _missing_module(exc: BaseException) -> str | None:
    """The module whose absence caused `exc`; Axolotl often re-raises it with its own message."""
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name
        exc = exc.__cause__ or exc.__context__
    return None


def _missing_package(module: str) -> str:
    top = module.split(".")[0]
    package = top.replace("_", "-")
    if top in GPU_ONLY:
        return f"`{package}` is not installed here: it is a GPU-only package, needed on the GPU host"
    return f"the package `{package}` is not installed in this environment"


def _why_unloadable(name: str, exc: Exception) -> str | None:
    """Why a plugin that exists cannot be loaded here (something it imports is missing), or None
    when the plugin itself does not exist."""
    if not isinstance(exc, ImportError):
        return None  # the module has no such class, or the name has no dot
    module, missing = name.rpartition(".")[0], _missing_module(exc)
    if not missing:
        return str(exc)
    if any(m == missing or m.startswith(missing + ".") for m in (module, f"axolotl.integrations.{module}")):
        return None
    return _missing_package(missing)


def plugin_problems(path: Path, cfg: dict) -> list[str]:
    """Listed plugins that do not exist, and (as MachineLimit) those that cannot load here."""
    _, failed = load_plugins(cfg)
    where = f"{path}:{key_lines(path).get(('plugins',), '?')}"
    found = []
    for name, exc in failed.items():
        if why := _why_unloadable(name, exc):
            found.append(MachineLimit(f"{where}: plugin `{name}` cannot be loaded: {why}; its options were not checked"))
        else:
            hint = difflib.get_close_matches(name, shipped_plugins(), n=1)
            found.append(f"{where}: plugin `{name}` not found" + (
                f" (did you mean `{hint[0]}`?)" if hint
                else " (a plugin is `module.ClassName`, e.g. `axolotl.integrations.liger.LigerPlugin`)"))
    return found


DATASET_KEYS = ("datasets", "test_datasets", "pretraining_dataset")


def dataset_models(cfg: dict, key: str, entry: dict) -> tuple:
    """The model(s) Axolotl reads a dataset entry as; it drops every key they lack. Mirrors
    axolotl.utils.config.validate_config, which converts `datasets` entries by `rl` before
    validating (ORPO, GRPO and plain SFT stay SFTDataset); `pretraining_dataset` is a union in
    the schema itself. `test_datasets` follows `datasets`: an eval set has the training format."""
    from axolotl.utils.schemas import datasets as ds

    if key == "pretraining_dataset":
        return ds.PretrainingDataset, ds.SFTDataset
    if cfg.get("rl") in ("dpo", "ipo", "simpo"):
        return (ds.DPODataset,)
    if cfg.get("rl") == "kto":
        return (ds.KTODataset,)
    if entry.get("type") == "_synthetic":
        return (ds.SyntheticDataset,)
    return (ds.SFTDataset,)


def unknown_keys(path: Path, cfg: dict) -> list[str]:
    """Keys the config's schema does not know, as `file:line: ...` messages: a suggestion for a
    misspelling, the plugin to list for a plugin's option; and, as notes, dataset keys that
    Axolotl drops for this training type and keys that a plugin which cannot load might own."""
    from axolotl.utils.schemas import datasets as ds

    plugins, failed = load_plugins(cfg)
    unloadable = [name for name, exc in failed.items() if _why_unloadable(name, exc)]
    top = _accepted(input_model(plugins))
    every_dataset_key = set().union(*map(_accepted, (
        ds.SFTDataset, ds.DPODataset, ds.KTODataset, ds.StepwiseSupervisedDataset, ds.SyntheticDataset,
        ds.PretrainingDataset)))
    lines = key_lines(path)

    def unknown(key_path: tuple, known: set[str], otherwise: str) -> str:
        hint = difflib.get_close_matches(key_path[-1], known, n=1)
        return (f"{path}:{lines.get(key_path, '?')}: unknown key `{'.'.join(map(str, key_path))}`"
                + (f" (did you mean `{hint[0]}`?)" if hint else f" ({otherwise})"))

    def top_level(key: str) -> str:
        where = f"{path}:{lines.get((key,), '?')}"
        owners = [name for name, options in shipped_plugins().items() if key in options]
        if owners:
            fix = f"add `{owners[0]}` to `plugins`" if cfg.get("plugins") else f"add `plugins: [{owners[0]}]`"
            return f"{where}: `{key}` is an option of the {_plugin_label(owners[0])} plugin: {fix}"
        if unloadable:
            return Note(f"{where}: `{key}` was not checked: it may be an option of "
                        f"{', '.join(f'`{name}`' for name in unloadable)}, which cannot be loaded here")
        return unknown((key,), top, "not an Axolotl option")

    def in_dataset(key_path: tuple, models: tuple) -> str:
        label = " or ".join(model.__name__ for model in models)
        if key_path[-1] in every_dataset_key:
            return Note(f"{path}:{lines.get(key_path, '?')}: `{'.'.join(map(str, key_path))}` is ignored: "
                        f"Axolotl reads this entry as {label}, which drops it")
        return unknown(key_path, set().union(*map(_accepted, models)), f"not an option of {label}")

    found = []
    for key, value in cfg.items():
        if key not in top:
            found.append(top_level(key))
        elif key in DATASET_KEYS and isinstance(value, list):
            for index, entry in enumerate(value):
                if isinstance(entry, dict):
                    models = dataset_models(cfg, key, entry)
                    accepted = set().union(*map(_accepted, models))
                    found += [in_dataset((key, index, sub_key), models) for sub_key in entry if sub_key not in accepted]
    return found


def _where(path: Path, lines: dict, message: str) -> str:
    """`file:line` of the first top-level key that `message` names in backticks, else `file`."""
    for name in re.findall(r"`(\w+)`", message):
        if (name,) in lines:
            return f"{path}:{lines[(name,)]}"
    return str(path)


def schema_errors(path: Path, cfg: dict) -> list[str]:
    """Axolotl's own pydantic validation of the config, with the config's plugins."""
    import pydantic
    from axolotl.utils.config import validate_config
    from axolotl.utils.dict import DictDefault

    plugins, _ = load_plugins(cfg)
    lines = key_lines(path)
    try:
        with plugins_registered(plugins):
            validate_config(DictDefault(dict(cfg)))
    except pydantic.ValidationError as exc:
        return [f"{path}:{lines.get((str(err['loc'][0]),), '?') if err['loc'] else '?'}: "
                f"{'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}" for err in exc.errors()]
    except (ValueError, Warning) as exc:  # Axolotl raises DeprecationWarning for removed options
        return [f"{_where(path, lines, str(exc))}: {exc}"]
    except ImportError as exc:  # a validator imports a package this machine lacks
        missing = _missing_module(exc)
        why = _missing_package(missing) if missing else "a package is not installed here"
        return [MachineLimit(f"{path}: Axolotl's validation stopped ({str(exc).split('. ')[0]}): "
                             f"{why}; its remaining checks did not run")]
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
    """Raise UserError listing every problem found; print the notes; return the parsed config."""
    path = Path(path)
    cfg = load_config(path)
    found = plugin_problems(path, cfg) + unknown_keys(path, cfg) + schema_errors(path, cfg)
    if for_training:
        found += missing_paths(path, cfg) + hardware_problems(path, cfg)
    problems = []
    for finding in found:
        if not isinstance(finding, Note) or for_training and isinstance(finding, MachineLimit):
            problems.append(finding)
        else:
            print(f"note: {finding}", file=sys.stderr)
    if problems:
        raise UserError(f"{path} is not valid ({len(problems)} problem(s)):\n  " + "\n  ".join(problems))
    return cfg


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.train.validate_config", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="+", type=Path, help="Axolotl YAML file(s)")
    parser.add_argument("--for-training", action="store_true",
                        help="also check paths, hardware and the output folder, as `make train` does")
    parser.add_argument("--hardware-only", action="store_true",
                        help="only check that this machine can run the config (`make train-1a` does this "
                             "before it builds the training data)")
    parser.add_argument("--output-dir", help="where training will write (default: the config's output_dir)")
    parser.add_argument("--overwrite", action="store_true", help="remove a finished run in the output folder")
    args = parser.parse_args(argv)
    for path in args.configs:
        if args.hardware_only:
            if problems := hardware_problems(path, load_config(path)):
                raise UserError("\n".join(problems))
        else:
            cfg = validate(path, for_training=args.for_training)
            if args.for_training:
                prepare_output(cfg, args.output_dir, args.overwrite)
        print(f"ok: {path}")


if __name__ == "__main__":
    run_cli(main)
