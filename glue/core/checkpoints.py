"""Model folders on disk: the one check that a path holds a loadable checkpoint, whether a
training run finished, whether an adapter belongs on a base, and sizes."""

from __future__ import annotations

import json
from pathlib import Path

from glue.core.io import UserError

HINT = "expected a Hugging Face checkpoint folder (config.json, weights, tokenizer), e.g. a merged model"


def check_model_dir(path: str | Path, *, gguf_ok: bool = False, dense: str | None = None,
                    load_config: bool = True) -> Path:
    """`path` if it is a checkpoint folder with weights and a tokenizer (or, with `gguf_ok`, a
    GGUF file), else a UserError saying what is missing. With `dense` (the reason a dense
    model is needed), a quantized or compressed checkpoint is refused as well."""
    path = Path(path)
    if gguf_ok and path.suffix == ".gguf" and path.is_file():
        return path
    if not path.is_dir():
        raise UserError(f"model folder not found: {path} ({HINT})")
    if not (path / "config.json").is_file():
        raise UserError(f"{path} is not a model folder: no config.json ({HINT})")
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise UserError(f"{path} is not a model folder: no *.safetensors or *.bin weights ({HINT})")
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise UserError(f"{path} has no tokenizer files ({HINT})")
    if dense is not None:
        config = json.loads((path / "config.json").read_text())
        quant = config.get("quantization_config")
        if quant:
            method = quant.get("quant_method", "unknown") if isinstance(quant, dict) else quant
            raise UserError(f"{path} is already quantized/compressed (quantization_config: {method}); {dense}")
        if (path / "recipe.yaml").is_file():
            # llm-compressor leaves its recipe beside every output, pruned-only ones included.
            raise UserError(f"{path} was already compressed by llm-compressor (it holds recipe.yaml); {dense}")
    if load_config:
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}/config.json cannot be loaded by transformers: {exc}") from None
    return path


def same_model(a: str | Path, b: str | Path) -> bool:
    """Whether two base-model names (an adapter's `base_model_name_or_path`, a config's
    `base_model`) are the same model: one folder when either is a local path, else one hub id."""
    if Path(a).exists() or Path(b).exists():
        return Path(a).resolve() == Path(b).resolve()
    return str(a).rstrip("/") == str(b).rstrip("/")


def adapter_base_mismatch(adapter_dir: str | Path, base: str, base_role: str, fix: str) -> str | None:
    """Why the LoRA adapter in `adapter_dir` was not trained on `base` (None when it was), in the
    words of the merge guard and the modifier loader alike: `base_role` says what `base` is to
    the caller ("the config's base_model"), `fix` what to do."""
    config = Path(adapter_dir) / "adapter_config.json"
    trained_on = json.loads(config.read_text()).get("base_model_name_or_path", "")
    if same_model(trained_on, str(base)):
        return None
    return f"{config}: the adapter was trained on `{trained_on}` but {base_role} is `{base}`: {fix}"


# Axolotl writes these into the run folder only when training ends (checkpoints go to
# checkpoint-N/); adapter_config.json is pre-saved when training starts, so it proves nothing.
FINAL_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors",
                 "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def finished_run(output_dir: str | Path) -> bool:
    """A training run is finished when Axolotl has written its final weights; checkpoints alone
    mean an interrupted run, which `auto_resume_from_checkpoints` continues."""
    return any((Path(output_dir) / name).is_file() for name in FINAL_WEIGHTS)


def disk_bytes(path: Path, suffix: str | None = None) -> int:
    """Bytes on disk of a file, or of a folder's files (only those ending in `suffix` if given)."""
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    return sum(p.stat().st_size for p in files if suffix is None or p.name.endswith(suffix))
