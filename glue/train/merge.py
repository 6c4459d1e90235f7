"""Merge a trained LoRA adapter into its full-precision base with `axolotl merge-lora`,
behind a guard, and prove the merge before it is put in place.

The guard refuses the merges that silently corrupt a model:
a quantized base, a QLoRA/4-bit/8-bit training config (unless explicitly accepted), and an
adapter trained on another base. The proof: on a fixed probe batch the merged model's
logits match base+adapter (unmerged), every weight is finite, no quantization_config is
left, and the dtype is the one training used. Axolotl writes into a temporary folder that
is renamed to `<run>/merged` only when the proof passes, so a failed merge leaves nothing
that looks finished.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from glue.core.checkpoints import adapter_base_mismatch
from glue.core.io import UserError, atomic_path, run_cli
from glue.core.manifest import write_manifest
from glue.train.axolotl_run import run as run_quietly
from glue.train.validate_config import key_lines, validate

# Names of published pre-quantized checkpoints (unsloth ...-bnb-4bit, TheBloke ...-GPTQ/-AWQ, ...).
QUANTIZED_NAME = re.compile(r"bnb|[48]bit|gptq|awq|\bnf4\b|int[48]|fp8|gguf|exl2|w4a16|w8a8", re.IGNORECASE)
PROBE_PROMPTS = [
    "What is the capital of France?",
    "Write a Python function that reverses a string.",
    "If a train travels 60 km in 45 minutes, what is its speed in km/h?",
    "Explain photosynthesis in one sentence.",
]


def _base_config(base: str) -> tuple[dict | None, str]:
    """The base's config.json (a local folder, or the hub cache when it holds a copy)."""
    local = Path(base) / "config.json"
    if local.is_file():
        return json.loads(local.read_text()), str(local)
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(base, "config.json")
    except ValueError:  # not a valid hub id
        cached = None
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text()), cached
    return None, ""


def guard(config_path: Path, cfg: dict, adapter_dir: Path, allow_qlora_merge: bool) -> list[str]:
    """Every reason to refuse this merge, each naming the file and the fix."""
    problems = []
    base = str(cfg.get("base_model", ""))
    lines = key_lines(config_path)
    base_cfg, base_cfg_path = _base_config(base)
    fix_base = ("train on the full-precision base (e.g. meta-llama/Llama-3.1-8B-Instruct) "
                "with `adapter: lora` and merge into that")
    if base_cfg and base_cfg.get("quantization_config"):
        method = base_cfg["quantization_config"].get("quant_method", "unknown method")
        problems.append(f"{base_cfg_path}: the base model is quantized ({method}); merging an adapter "
                        f"into quantized weights corrupts the model: {fix_base}")
    elif QUANTIZED_NAME.search(base):
        problems.append(f"{config_path}:{lines.get(('base_model',), '?')}: base_model `{base}` is a "
                        f"pre-quantized checkpoint by its name: {fix_base}")

    quantized_training = [key for key in ("load_in_4bit", "load_in_8bit") if cfg.get(key)]
    if cfg.get("adapter") == "qlora":
        quantized_training.append("adapter: qlora")
    if quantized_training and not allow_qlora_merge:
        first = "adapter" if cfg.get("adapter") == "qlora" else quantized_training[0]
        problems.append(
            f"{config_path}:{lines.get((first,), '?')}: trained with {', '.join(quantized_training)}; Axolotl "
            "would merge into a simulated-NF4 copy of the base. Retrain with `adapter: lora` and no "
            "load_in_4bit/8bit (as the rendered configs do), or accept the simulated merge with "
            "ALLOW_QLORA_MERGE=1 (recorded in the merge manifest)")

    adapter_cfg_path = adapter_dir / "adapter_config.json"
    if not adapter_cfg_path.is_file():
        problems.append(f"{adapter_dir}: no trained adapter (adapter_config.json) here: train first "
                        "(`make train-1a` or `make train CONFIG=...`) or point RUN at the run folder")
    elif mismatch := adapter_base_mismatch(adapter_dir, base, "the config's base_model",
                                           "merge with the config the adapter was trained with"):
        problems.append(mismatch)
    return problems


def run_axolotl_merge(config_path: Path, adapter_dir: Path, staging: Path) -> Path:
    """`axolotl merge-lora` writes `<output_dir>/merged`; point output_dir at a staging folder."""
    axolotl = Path(sys.executable).with_name("axolotl")
    cmd = [str(axolotl), "merge-lora", str(config_path),
           f"--lora-model-dir={adapter_dir}", f"--output-dir={staging}"]
    returncode = run_quietly(cmd, env={**os.environ, "PATH": f"{axolotl.parent}:{os.environ.get('PATH', '')}"})
    merged = staging / "merged"
    if returncode != 0 or not (merged / "config.json").is_file():
        raise UserError(f"`{' '.join(cmd)}` failed (exit {returncode}); nothing was put in place")
    return merged


# Training precision -> the dtype name safetensors headers store for it.
SAFETENSORS_DTYPE = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}


def expected_dtype(cfg: dict) -> str:
    return "bfloat16" if cfg.get("bf16") is True else "float16" if cfg.get("fp16") is True else "float32"


def default_tolerance(dtype: str) -> float:
    """Max |logit difference| allowed, relative to the largest reference logit. fp32 merges are
    exact up to summation order; a 16-bit merge rounds W + BA to the stored precision."""
    return 1e-5 if dtype == "float32" else 2e-2


def prove_merge(base: str, adapter_dir: Path, merged_dir: Path, dtype: str, tolerance: float | None) -> dict:
    """Compare merged logits with base+adapter on the probe batch; check weights and config."""
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in PROBE_PROMPTS]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    mask = batch["attention_mask"].bool()

    with torch.no_grad():
        # Reference in fp32 so the comparison measures the merge, not the compute precision.
        reference = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
        reference = PeftModel.from_pretrained(reference, str(adapter_dir)).eval()
        ref_logits = reference(**batch).logits[mask].float().cpu()
        del reference
        merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).to(device).eval()
        new_logits = merged(**batch).logits[mask].float().cpu()
        finite = all(torch.isfinite(p).all().item() for p in merged.parameters())
        parameters = sum(p.numel() for p in merged.parameters())
        del merged

    stored_dtypes = set()
    for shard in merged_dir.glob("*.safetensors"):
        with safe_open(str(shard), framework="pt") as fh:
            stored_dtypes |= {fh.get_slice(name).get_dtype() for name in fh.keys()}
    diff = (new_logits - ref_logits).abs().max().item()
    scale = ref_logits.abs().max().item()
    tolerance = default_tolerance(dtype) if tolerance is None else tolerance
    merged_config = json.loads((merged_dir / "config.json").read_text())
    figures = {
        "probe_tokens": int(mask.sum()),
        "max_abs_logit_diff": diff,
        "max_abs_reference_logit": scale,
        "relative_diff": diff / max(scale, 1e-12),
        "tolerance_relative": tolerance,
        "top1_agreement": (new_logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item(),
        "all_finite": finite,
        "quantization_config": "quantization_config" in merged_config,
        "stored_dtypes": sorted(stored_dtypes),
        "expected_dtype": dtype,
        "parameters": parameters,
        "size_bytes": sum(f.stat().st_size for f in merged_dir.rglob("*.safetensors")),
    }
    failures = []
    if figures["relative_diff"] > tolerance:
        failures.append(f"logits differ from base+adapter by {diff:.3g} "
                        f"({figures['relative_diff']:.3g} of the largest logit > {tolerance:g})")
    if not finite:
        failures.append("some merged weights are NaN or infinite")
    if figures["quantization_config"]:
        failures.append("the merged config.json still carries a quantization_config")
    if stored_dtypes != {SAFETENSORS_DTYPE[dtype]}:
        failures.append(f"merged weights are stored as {sorted(stored_dtypes)}, expected {dtype}")
    figures["failures"] = failures
    return figures


def merge(config_path: str | Path, run_dir: str | Path | None = None, allow_qlora_merge: bool = False,
          overwrite: bool = False, tolerance: float | None = None) -> Path:
    """Guard, merge, prove, and put `<run>/merged` in place. Returns the merged folder."""
    started = time.time()
    config_path = Path(config_path)
    cfg = validate(config_path)
    adapter_dir = Path(run_dir or cfg["output_dir"])
    problems = guard(config_path, cfg, adapter_dir, allow_qlora_merge)
    if problems:
        raise UserError("refusing to merge:\n  " + "\n  ".join(problems))
    target = adapter_dir / "merged"
    if target.exists() and not overwrite:
        raise UserError(f"{target} already exists: use it, or merge again with OVERWRITE=1")

    dtype = expected_dtype(cfg)
    with atomic_path(target, overwrite=overwrite) as tmp:
        staging = tmp.with_name(tmp.name + ".axolotl")
        try:
            os.replace(run_axolotl_merge(config_path, adapter_dir, staging), tmp)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        figures = prove_merge(str(cfg["base_model"]), adapter_dir, tmp, dtype, tolerance)
        nf4 = bool(cfg.get("load_in_4bit") or cfg.get("adapter") == "qlora")
        if nf4:
            # Axolotl folds the adapter into an NF4 round trip of the base, so the merged model
            # cannot match full-precision base+adapter: record how far it is instead of gating.
            figures["failures"] = [f for f in figures["failures"] if not f.startswith("logits differ")]
            figures["warning"] = (
                "accepted Axolotl's NF4-simulated merge of a QLoRA run (ALLOW_QLORA_MERGE=1): "
                f"its logits differ from full-precision base+adapter by {figures['relative_diff']:.3g} "
                "of the largest logit")
        if figures["failures"]:
            raise UserError("merge check failed, nothing was put in place: " + "; ".join(figures["failures"]))
        write_manifest(tmp, "merge", {"config": config_path, "adapter": adapter_dir / "adapter_model.safetensors"},
                       {"base_model": str(cfg["base_model"]), "allow_qlora_merge": allow_qlora_merge,
                        "nf4_simulated": nf4}, figures, started)
    print(f"merged -> {target}: max |logit diff| {figures['max_abs_logit_diff']:.3g} over "
          f"{figures['probe_tokens']} probe tokens, top-1 agreement {figures['top1_agreement']:.3f}, "
          f"{figures['parameters']:,} parameters ({figures['expected_dtype']})")
    if "warning" in figures:
        print(f"WARNING: {figures['warning']}")
    return target


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.train.merge", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="the Axolotl config the adapter was trained with")
    parser.add_argument("--run", type=Path, help="run folder holding the adapter (default: the config's output_dir)")
    parser.add_argument("--allow-qlora-merge", action="store_true",
                        help="accept Axolotl's NF4-simulated merge for a QLoRA/4-bit run (not recommended)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing <run>/merged")
    parser.add_argument("--tolerance", type=float,
                        help="max logit difference relative to the largest logit (default: 1e-5 fp32, 2e-2 bf16)")
    args = parser.parse_args(argv)
    merge(args.config, args.run, args.allow_qlora_merge, args.overwrite, args.tolerance)


if __name__ == "__main__":
    run_cli(main)
