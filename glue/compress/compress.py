"""Compress a merged full-precision checkpoint with an llm-compressor recipe (`oneshot`) and
write a compressed-tensors checkpoint that transformers (and vLLM on GPU hosts) loads.

Runs in the compression environment only: `.venv-compress/bin/python -m glue.compress.compress`.
Calibration samples are records of the curated train split rendered with the model's own
chat template, so the activations llm-compressor sees are those the model will serve.
The output is written to a temporary sibling folder, reloaded with AutoModelForCausalLM on
CPU as a check, and only then renamed into place with its manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path
from typing import Iterator

from glue.core.checkpoints import check_model_dir, disk_bytes
from glue.core.io import UserError, atomic_path, load_yaml, require_file, run_cli, sha256_path
from glue.core.manifest import write_manifest
from glue.core.records import render_records

CALIBRATION_KEYS = {"samples", "max_seq_length"}


def load_recipe(path: Path) -> tuple[dict, dict]:
    """Check a recipe file and parse it with llm-compressor's own parser.

    Returns (calibration defaults, the YAML mapping). llm-compressor's parser silently skips
    top-level keys that do not end in `_stage` and group keys that do not end in
    `_modifiers`, so a misspelt stage would compress nothing: those are checked here first.
    Unknown modifiers and misspelt modifier arguments are caught by llm-compressor itself.
    """
    from llmcompressor.recipe import Recipe

    recipe = load_yaml(require_file(path, "recipe", "see compression_recipes/"))
    if not isinstance(recipe, dict):
        raise UserError(f"{path}: a recipe is a mapping of `<name>_stage:` entries")
    for key, value in recipe.items():
        if key == "calibration":
            continue
        if not key.endswith("_stage") or not isinstance(value, dict):
            raise UserError(f"{path}: unknown top-level key {key!r} (expected `calibration` or "
                            f"`<name>_stage:` mappings)")
        for group in value:
            if not str(group).endswith("_modifiers") or not isinstance(value[group], dict):
                raise UserError(f"{path}: {key}: unknown key {group!r} (expected "
                                f"`<name>_modifiers:` mappings of modifier name to arguments)")
    calibration = recipe.get("calibration") or {}
    if not isinstance(calibration, dict) or set(calibration) - CALIBRATION_KEYS:
        raise UserError(f"{path}: `calibration` takes only {sorted(CALIBRATION_KEYS)}, got {calibration!r}")
    for key, value in calibration.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"{path}: calibration.{key} must be a positive integer, got {value!r}")
    try:
        parsed = Recipe.create_instance(str(path))
    except Exception as exc:  # llm-compressor raises ValueError / pydantic ValidationError / KeyError
        detail = " ".join(str(exc).split())
        raise UserError(f"{path}: llm-compressor rejects the recipe: {detail[:600]}") from None
    if not parsed.modifiers:
        raise UserError(f"{path}: the recipe has no modifiers")
    return calibration, recipe


def calibration_dataset(texts: list[str], tokenizer, max_seq_length: int):
    """A tokenized datasets.Dataset; the chat template already holds the BOS token."""
    from datasets import Dataset

    encoded = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=max_seq_length)
    return Dataset.from_dict({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]})


@contextlib.contextmanager
def cpu_safe_awq() -> Iterator[bool]:
    """Let AWQ run on a host without CUDA; yields whether the patch was applied.

    llm-compressor 0.14's AWQModifier calls IntermediatesCache.pin_memory on every cached
    calibration batch; pinning page-locked host memory needs an accelerator and raises
    `RuntimeError: Cannot access accelerator device when none is available` on CPU. Pinning
    only speeds up host-to-device copies, and without CUDA nothing is copied, so the method
    is made a no-op for the duration of the call, and only when no CUDA device exists.
    """
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache

    if torch.cuda.is_available():
        yield False
        return
    original = IntermediatesCache.pin_memory
    IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None
    try:
        yield True
    finally:
        IntermediatesCache.pin_memory = original


def weight_sparsity(model) -> dict:
    """Measured zeros in the Linear weights (LM head excepted), and the share of groups of 4
    consecutive weights holding at least 2 zeros (1.0 means an intact 2:4 pattern)."""
    import torch

    zeros = total = groups = groups_2of4 = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            weight = module.weight.detach()
            zeros += int((weight == 0).sum())
            total += weight.numel()
            if weight.shape[-1] % 4 == 0:
                per_group = (weight.reshape(-1, 4) == 0).sum(dim=1)
                groups += per_group.numel()
                groups_2of4 += int((per_group >= 2).sum())
    return {"linear_sparsity": round(zeros / total, 4) if total else None,
            "groups_2of4": round(groups_2of4 / groups, 4) if groups else None}


def compress(model_dir: Path, recipe_path: Path, data: Path, out: Path, samples: int | None = None,
             max_seq_length: int | None = None, seed: int = 0, overwrite: bool = False) -> dict:
    """Run `oneshot` with the recipe on `model_dir` and write the checkpoint to `out`."""
    import llmcompressor
    import torch
    from llmcompressor import oneshot
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.time()
    model_dir, recipe_path, out = Path(model_dir), Path(recipe_path), Path(out)
    calibration, _ = load_recipe(recipe_path)
    check_model_dir(model_dir, dense="compress the full-precision merged model, chaining methods as stages of one recipe")
    samples = samples or calibration.get("samples")
    max_seq_length = max_seq_length or calibration.get("max_seq_length")
    if not samples or not max_seq_length:
        raise UserError(f"{recipe_path}: no calibration.samples/max_seq_length: set them in the "
                        "recipe or pass --samples/--max-seq-length")
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists (remove it, or pass --overwrite / OVERWRITE=1)")

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = render_records(data, tokenizer, samples, seed)
    dataset = calibration_dataset(texts, tokenizer, max_seq_length)
    token_counts = [len(ids) for ids in dataset["input_ids"]]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    parameters = sum(p.numel() for p in model.parameters())

    with atomic_path(out, overwrite=overwrite) as tmp:
        oneshot_started = time.time()
        with cpu_safe_awq() as patched:
            model = oneshot(model=model, tokenizer=tokenizer, recipe=str(recipe_path), dataset=dataset,
                            num_calibration_samples=len(texts), max_seq_length=max_seq_length,
                            shuffle_calibration_samples=False, pipeline="sequential")
        oneshot_seconds = time.time() - oneshot_started
        model.save_pretrained(tmp, save_compressed=True)
        tokenizer.save_pretrained(tmp)
        del model

        # The proof that the artefact is usable: it reloads on CPU and gives finite logits.
        reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype="auto", device_map="cpu")
        probe = torch.tensor([dataset[0]["input_ids"][:64]])
        with torch.no_grad():
            logits = reloaded(input_ids=probe).logits
        if not torch.isfinite(logits).all():
            raise UserError(f"{recipe_path.name}: the compressed model gives non-finite logits; "
                            "nothing was written")
        sizes = {"weights_bytes": disk_bytes(tmp, ".safetensors"), "folder_bytes": disk_bytes(tmp)}
        figures = {
            **sizes,
            "parameters": parameters,
            "bits_per_parameter": round(8 * sizes["weights_bytes"] / parameters, 3),
            **weight_sparsity(reloaded),
            "calibration_samples": len(texts),
            "calibration_tokens": sum(token_counts),
            "oneshot_seconds": round(oneshot_seconds, 2),
        }
        write_manifest(tmp, "compress", {"model": model_dir, "recipe": recipe_path, "data": data}, {
            "recipe": recipe_path.stem,
            "recipe_sha256": sha256_path(recipe_path),
            "calibration_samples_requested": samples,
            "max_seq_length": max_seq_length,
            "seed": seed,
            "awq_cpu_patch": patched,
            "llmcompressor": llmcompressor.__version__,
        }, figures, started)
    return figures


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.compress.compress", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="merged full-precision checkpoint folder")
    parser.add_argument("--recipe", type=Path, required=True, help="llm-compressor recipe (compression_recipes/*.yaml)")
    parser.add_argument("--data", type=Path, required=True, help="curated train split (JSONL with `messages`)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the compressed checkpoint to")
    parser.add_argument("--samples", type=int, help="calibration records (default: the recipe's calibration.samples)")
    parser.add_argument("--max-seq-length", type=int,
                        help="calibration tokens per record (default: the recipe's calibration.max_seq_length)")
    parser.add_argument("--seed", type=int, default=0, help="which records are drawn for calibration")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    args = parser.parse_args(argv)
    figures = compress(args.model, args.recipe, args.data, args.out, args.samples, args.max_seq_length,
                       args.seed, args.overwrite)
    print(f"compressed -> {args.out}: {figures['weights_bytes']:,} bytes of weights, "
          f"{figures['bits_per_parameter']} bits/parameter, oneshot {figures['oneshot_seconds']} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    run_cli(main)
