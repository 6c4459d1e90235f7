"""Convert domain modifiers (PEFT LoRA adapters) to GGUF with llama.cpp's own
`convert_lora_to_gguf.py`, hot-swap them on each base GGUF of `make gguf`, and check them
against transformers + peft.

Runs in the compression environment: `.venv-compress/bin/python -m glue.modifiers.gguf_adapter`.
The converter comes from the same pinned llama-cpp-python sdist as `make gguf`'s
(`.venv-compress/src/llama.cpp`), so adapter files and runtime come from one llama.cpp commit.
It reads only the base model's config.json (`--base`), never its weights or tokenizer.

Each base GGUF is loaded once and every adapter is switched on and off on the same context,
as a server switches modifiers per request (llama.cpp's `llama_set_adapters_lora`; the
KV cache is cleared at each switch, since cached keys and values carry the previous adapter).
For each adapter and base file, on a few held-out prompts, against transformers base + adapter:
the prompt's token ids, the greedy continuation, the teacher-forced top-1 agreement (as
`make gguf` measures the base) and the same agreement with the adapter switched off, the
control that shows what the adapter changes. Top-1 agreement cannot tell an ignored adapter
from a weak one, so the check also compares the change the adapter makes to the logits:
`effect_error` = |(llama.cpp with - without) - (transformers with - without)| / |transformers
with - without| (Frobenius norms over the prompts' continuation positions): 0 when llama.cpp
applies exactly the adapter transformers applies, 1 when it applies none.

The 16/32-bit base file is gated (tokenizer identical, --min-agreement, --max-effect-error);
on quantized bases the adapter, trained on dense weights, meets rounded ones: their figures and
the drop from the 16-bit file are measured, not gated. Everything is written into a temporary
sibling folder and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

from glue.compress.gguf import (BASE_TYPES, agreement, context_size, greedy_continuations, load_gguf, load_reference,
                                prompts_from)
from glue.core.checkpoints import adapter_base_mismatch, check_model_dir
from glue.core.io import UserError, atomic_path, require_file, run_cli, sha256_path
from glue.core.manifest import write_manifest

ADAPTER_TYPES = ("f32", "f16", "bf16", "q8_0")  # what convert_lora_to_gguf.py writes
# Adapter options the converter drops without a word: the file would load, but llama.cpp scales
# every adapter tensor by lora_alpha / rank (rank read from the tensor's shape).
SILENTLY_DROPPED = {
    "use_rslora": "rsLoRA scales by lora_alpha / sqrt(r), which llama.cpp would apply as lora_alpha / r",
    "alpha_pattern": "the converter writes one lora_alpha for the whole adapter, so per-module alphas are lost",
}


def read_adapter(adapter_dir: Path, base_model: Path) -> dict:
    """adapter_config.json of a finished PEFT LoRA adapter trained on `base_model`, or a
    UserError naming the file and the fix."""
    adapter_dir = Path(adapter_dir)
    config_path = require_file(adapter_dir / "adapter_config.json", "PEFT adapter config",
                               "expected a trained LoRA adapter folder, e.g. `make modifier DOMAIN=...`'s output")
    if not any((adapter_dir / name).is_file() for name in ("adapter_model.safetensors", "adapter_model.bin")):
        raise UserError(f"{adapter_dir}: no adapter_model.safetensors: the training run has not finished "
                        "(Axolotl writes adapter_config.json when training starts); finish training first")
    config = json.loads(config_path.read_text())
    if config.get("peft_type") != "LORA":
        raise UserError(f"{config_path}: peft_type is {config.get('peft_type')!r}; llama.cpp converts LoRA adapters only")
    for key, why in SILENTLY_DROPPED.items():
        if config.get(key):
            raise UserError(f"{config_path}: {key} is set and llama.cpp's converter ignores it ({why}); "
                            f"retrain without {key} to serve this adapter with llama.cpp")
    if mismatch := adapter_base_mismatch(adapter_dir, base_model, "the base given",
                                         "check it over the base it was trained on and that base's `make gguf` files "
                                         "(MODEL=<that base>)"):
        raise UserError(mismatch)
    return config


def base_ggufs(gguf_dir: Path, base_model: Path) -> dict[str, Path]:
    """`make gguf`'s files of `base_model` by type, the 16/32-bit one first, then the quantized
    ones largest first (Q5_K_M before Q4_K_M, so the drop grows down the table); a folder exported
    from another model is refused (an adapter only fits the weights it was trained on)."""
    gguf_dir = Path(gguf_dir)
    manifest_path = require_file(gguf_dir / "manifest.json", "GGUF export manifest",
                                 f"expected `make gguf`'s output folder; run `make gguf MODEL={base_model}`")
    exported = json.loads(manifest_path.read_text())["inputs"]["model"]
    if exported["sha256"] != sha256_path(base_model):
        raise UserError(f"{manifest_path}: these GGUF files were exported from {exported['path']}, whose weights are not "
                        f"{base_model}'s (the adapters' base): run `make gguf MODEL={base_model}` first")
    files = {path.stem.removeprefix("model-"): path for path in sorted(gguf_dir.glob("model-*.gguf"))}
    dense = [t for t in files if t in BASE_TYPES]
    if not dense:
        raise UserError(f"{gguf_dir}: no model-f16.gguf (or f32, bf16) to gate the adapters on; run `make gguf` first")
    quantized = sorted((t for t in files if t not in BASE_TYPES), key=lambda t: -files[t].stat().st_size)
    return {t: files[t] for t in dense + quantized}


def convert_adapter(adapter_dir: Path, base_model: Path, out_file: Path, converter_dir: Path, adapter_type: str) -> None:
    """PEFT adapter folder -> one GGUF adapter file, by llama.cpp's converter (run as its own script)."""
    script = require_file(Path(converter_dir) / "convert_lora_to_gguf.py", "llama.cpp LoRA converter",
                          "run `make setup` (it unpacks the converter into .venv-compress/src/llama.cpp)")
    result = subprocess.run([sys.executable, str(script), "--base", str(base_model), "--outfile", str(out_file),
                             "--outtype", adapter_type, str(adapter_dir)])
    if result.returncode != 0 or not out_file.is_file():
        raise UserError(f"llama.cpp's LoRA converter failed on {adapter_dir} (exit {result.returncode}); see its log above")


def load_adapter(llm, path: Path):
    """Load a GGUF adapter onto a loaded base (llama-cpp-python's Llama takes one adapter, at
    construction; the C API takes many, freed with the model)."""
    import llama_cpp

    handle = llama_cpp.llama_adapter_lora_init(llm._model.model, str(path).encode())
    if not handle:
        raise UserError(f"llama.cpp could not load the adapter {path} onto {llm.model_path} (see its log above): "
                        "an adapter file fits only the architecture and shapes it was converted for")
    return handle


def use_adapter(llm, handle, scale: float = 1.0) -> None:
    """Switch the context to one adapter (None: the base alone), as a server does per request."""
    import llama_cpp

    adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle) if handle else None
    scales = (ctypes.c_float * 1)(scale) if handle else None
    if llama_cpp.llama_set_adapters_lora(llm._ctx.ctx, adapters, 1 if handle else 0, scales):
        raise UserError(f"llama.cpp refused to switch adapters on {llm.model_path}")
    # The KV cache holds keys and values computed with the previous adapter, and
    # llama-cpp-python reuses a cached prompt prefix: a shared chat-template prefix would be served stale.
    llm.reset()


def transformers_logits(model, ids: list[int], ref: list[int]):
    """transformers' next-token logits at each token of `ref` fed after `ids`, as float32 numpy."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids + ref], device=model.device)).logits
    return logits[0, len(ids) - 1:len(ids) + len(ref) - 1].float().cpu().numpy()


def transformers_reference(base_model: Path, adapters: dict[str, Path], prompts: list[tuple[str, list[int]]],
                           max_new_tokens: int) -> dict[str, dict]:
    """Per adapter: transformers base + adapter's greedy continuations, and the logits along
    them with the adapter on and off (peft, every adapter attached to one base)."""
    from peft import PeftModel

    model, reference = load_reference(base_model), {}
    for name, adapter_dir in adapters.items():
        if isinstance(model, PeftModel):
            model.load_adapter(adapter_dir, adapter_name=name)
        else:
            model = PeftModel.from_pretrained(model, adapter_dir, adapter_name=name)
        model.set_adapter(name)
        continuations = greedy_continuations(model, prompts, max_new_tokens)
        with_adapter = [transformers_logits(model, ids, ref) for (_, ids), ref in zip(prompts, continuations) if ref]
        with model.disable_adapter():
            without = [transformers_logits(model, ids, ref) for (_, ids), ref in zip(prompts, continuations) if ref]
        reference[name] = {"continuations": continuations, "with": with_adapter, "without": without}
    return reference


def effect_error(llama_with: list, llama_without: list, hf_with: list, hf_without: list) -> float | None:
    """How far llama.cpp's change of the logits by the adapter is from transformers' (see the module doc)."""
    import numpy as np

    def delta(a, b):
        return np.concatenate([x.astype(np.float64) - y for x, y in zip(a, b)]) if a else np.zeros(0)

    expected = delta(hf_with, hf_without)
    scale = float(np.linalg.norm(expected))
    return round(float(np.linalg.norm(delta(llama_with, llama_without) - expected)) / scale, 4) if scale else None


def check_on_base(gguf: Path, adapter_files: dict[str, Path], prompts, reference: dict[str, dict],
                  threads: int) -> dict[str, dict]:
    """Every adapter switched on one loaded base GGUF: figures with the adapter and without it."""
    n_ctx = max(context_size(prompts, r["continuations"]) for r in reference.values())
    llm = load_gguf(gguf, n_ctx, threads)
    handles = {name: load_adapter(llm, path) for name, path in adapter_files.items()}
    figures = {}
    for name, handle in handles.items():
        ref = reference[name]
        use_adapter(llm, handle)
        with_adapter, llama_with = agreement(llm, prompts, ref["continuations"])
        use_adapter(llm, None)
        without, llama_without = agreement(llm, prompts, ref["continuations"])
        figures[name] = {**with_adapter,
                         "top1_agreement_without_adapter": without["top1_agreement"],
                         "greedy_exact_match_without_adapter": without["greedy_exact_match"],
                         "effect_error": effect_error(llama_with, llama_without, ref["with"], ref["without"])}
    return figures


def check(base_model: Path, adapters: dict[str, Path], gguf_dir: Path, data: Path, out: Path, converter_dir: Path,
          adapter_type: str = "f16", prompts: int = 4, max_new_tokens: int = 24, min_agreement: float = 0.95,
          max_effect_error: float = 0.2, threads: int = 2, overwrite: bool = False) -> dict:
    """Convert every adapter ({name: PEFT folder}), check it over every base GGUF, write
    `<out>/<name>.gguf`, check.json, report.md and manifest.json; returns check.json's content."""
    started = time.time()
    base_model = check_model_dir(base_model, dense="the adapters are checked against this full-precision base")
    if adapter_type not in ADAPTER_TYPES:
        raise UserError(f"--adapter-type must be one of {', '.join(ADAPTER_TYPES)}, got {adapter_type!r}")
    if not adapters:
        raise UserError("no adapter to convert: give at least one PEFT LoRA folder")
    named = {name: Path(path) for name, path in adapters.items()}
    configs = {name: read_adapter(path, base_model) for name, path in named.items()}
    bases = base_ggufs(gguf_dir, base_model)
    from transformers import AutoTokenizer

    prompt_ids = prompts_from(data, AutoTokenizer.from_pretrained(base_model), prompts)
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.mkdir()
        files = {name: tmp / f"{name}.gguf" for name in named}
        for name, path in named.items():
            convert_adapter(path, base_model, files[name], converter_dir, adapter_type)
        reference = transformers_reference(base_model, named, prompt_ids, max_new_tokens)
        by_base = {t: check_on_base(gguf, files, prompt_ids, reference, threads) for t, gguf in bases.items()}
        results = {name: {"file": files[name].name, "bytes": files[name].stat().st_size, "rank": configs[name]["r"],
                          "lora_alpha": configs[name]["lora_alpha"],
                          "bases": {bases[t].name: {"type": t, **by_base[t][name]} for t in bases}}
                   for name in named}
        gate(results, bases, min_agreement, max_effect_error)
        (tmp / "check.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "report.md").write_text(report(results, bases, gguf_dir))
        write_manifest(tmp, "modifier_gguf", {"base_model": base_model, "gguf": gguf_dir, "prompts": data,
                                              **{f"adapter:{n}": p for n, p in named.items()}},
                       {"adapter_type": adapter_type, "prompts": len(prompt_ids), "max_new_tokens": max_new_tokens,
                        "min_agreement": min_agreement, "max_effect_error": max_effect_error,
                        "converter": str(converter_dir)}, results, started)
    return results


def gate(results: dict, bases: dict[str, Path], min_agreement: float, max_effect_error: float) -> None:
    """The 16/32-bit base is the conversion check; quantized bases are measured only."""
    dense = bases[next(iter(bases))].name
    problems = []
    for name, r in results.items():
        f = r["bases"][dense]
        if f["tokenizer_match"] < 1.0:
            problems.append(f"{dense} tokenizes the prompts differently from the base model's tokenizer: "
                            "export it again with `make gguf OVERWRITE=1`, whose own check must pass")
        if f["effect_error"] is None:
            problems.append(f"{name}: the adapter changes no logit of the base in transformers (are its lora_B "
                            "weights all zero?): an untrained adapter cannot be checked")
        elif f["effect_error"] > max_effect_error:
            problems.append(f"{name} over {dense}: llama.cpp changes the logits unlike transformers (effect error "
                            f"{f['effect_error']:.3f} > --max-effect-error {max_effect_error}; 1.0 means the adapter "
                            "is ignored): the adapter file or its scale is wrong")
        if f["top1_agreement"] is not None and f["top1_agreement"] < min_agreement:
            problems.append(f"{name} over {dense}: llama.cpp agrees with transformers + peft on "
                            f"{f['top1_agreement']:.3f} of next tokens (< --min-agreement {min_agreement})")
    if problems:
        raise UserError("; ".join(dict.fromkeys(problems)))


def report(results: dict, bases: dict[str, Path], gguf_dir: Path) -> str:
    base_check = Path(gguf_dir) / "check.json"
    alone = json.loads(base_check.read_text()) if base_check.is_file() else {}
    dense = bases[next(iter(bases))].name
    lines = ["# Modifiers in llama.cpp", "",
             "Each adapter converted by llama.cpp's `convert_lora_to_gguf.py`, switched on one loaded base GGUF, "
             "against transformers base + adapter (peft). Top-1: teacher-forced next-token agreement along "
             "transformers' greedy continuation; without adapter: the same base GGUF with the adapter switched off "
             "(the control); effect error: 0 when llama.cpp changes the logits exactly as transformers does, 1 when "
             f"it ignores the adapter. Gated on {dense} only; quantized bases are measured.", "",
             "| adapter | base GGUF | top-1 | drop vs 16-bit | without adapter | greedy exact | effect error | "
             "base alone vs transformers (make gguf) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        top = r["bases"][dense]["top1_agreement"]
        for file, f in r["bases"].items():
            drop = f"{top - f['top1_agreement']:.4f}" if top is not None and f["top1_agreement"] is not None else "n/a"
            lines.append(f"| {name} ({r['bytes'] / 1e6:.2f} MB) | {file} | {f['top1_agreement']} | {drop} | "
                         f"{f['top1_agreement_without_adapter']} | {f['greedy_exact_match']:.2f} | {f['effect_error']} | "
                         f"{alone.get(file, {}).get('top1_agreement', 'n/a')} |")
    return "\n".join(lines) + "\n"


def parse_adapters(specs: list[str]) -> dict[str, Path]:
    """`name=folder` or `folder` (named after the folder) -> {name: folder}; a name given twice is refused."""
    named = [spec.split("=", 1) if "=" in spec else (Path(spec).name, spec) for spec in specs]
    names = [name for name, _ in named]
    if twice := sorted({n for n in names if names.count(n) > 1}):
        raise UserError(f"adapter name(s) {', '.join(twice)} given twice (each becomes <name>.gguf): "
                        "name them with NAME=FOLDER, e.g. code=work/tiny/modifiers/code/adapter")
    return {name: Path(path) for name, path in named}


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.modifiers.gguf_adapter", description=__doc__.split("\n\n")[0])
    parser.add_argument("adapters", nargs="+", metavar="[NAME=]ADAPTER",
                        help="PEFT LoRA adapter folders, each written as NAME.gguf (default NAME: the folder's name)")
    parser.add_argument("--base-model", type=Path, required=True, help="the full-precision base the adapters were trained on")
    parser.add_argument("--gguf", type=Path, required=True, help="`make gguf`'s folder of that base (model-<type>.gguf)")
    parser.add_argument("--data", type=Path, required=True, help="held-out JSONL split; its first user turns are the check prompts")
    parser.add_argument("--out", type=Path, required=True, help="folder for <adapter>.gguf, check.json, report.md, manifest.json")
    parser.add_argument("--converter", type=Path, default=Path(".venv-compress/src/llama.cpp"))
    parser.add_argument("--adapter-type", default="f16", help=f"type the converter writes: {', '.join(ADAPTER_TYPES)}")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--min-agreement", type=float, default=0.95,
                        help="least top-1 agreement with transformers + peft over the 16/32-bit base")
    # 0.2 fails an ignored adapter (1.0) or one applied at a scale off by about 20 % or more, and leaves room
    # for a bf16 reference on a GPU; the tiny profile's f16 file measures under 0.01.
    parser.add_argument("--max-effect-error", type=float, default=0.2,
                        help="largest effect error over the 16/32-bit base (1.0: the adapter is ignored)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    results = check(args.base_model, parse_adapters(args.adapters), args.gguf, args.data, args.out, args.converter,
                    args.adapter_type, args.prompts, args.max_new_tokens, args.min_agreement, args.max_effect_error,
                    args.threads, args.overwrite)
    for name, r in results.items():
        for file, f in r["bases"].items():
            print(f"{name:16s} over {file:22s} top-1 {f['top1_agreement']}  without adapter "
                  f"{f['top1_agreement_without_adapter']}  greedy exact {f['greedy_exact_match']:.2f}  "
                  f"effect error {f['effect_error']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
