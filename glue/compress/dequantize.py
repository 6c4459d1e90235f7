"""Turn a compressed-tensors checkpoint (a `make compress` output) back into a plain dense
checkpoint of the same weights, so that Axolotl can fine-tune on top of it (stage 2E,
recovery): Axolotl's environment has no compressed-tensors, and a LoRA merge must never go
into quantized weights. The dense copy is checked against the compressed model's own logits
before it is put in place.

Runs in the compression environment (`.venv-compress/bin/python -m glue.compress.dequantize`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from glue.core.io import UserError, atomic_path, require_file, run_cli
from glue.core.manifest import write_manifest

# Tensors compressed-tensors adds beside each quantized weight; the dense copy drops them.
QUANTIZATION_TENSORS = ("weight_scale", "weight_zero_point", "weight_g_idx", "weight_shape", "weight_packed")
PROBE = "Explain in one sentence why the sky is blue."


def dequantize(src: str | Path, out: str | Path, overwrite: bool = False, tolerance: float = 1e-4) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils.quantization_config import CompressedTensorsConfig

    started = time.time()
    src = Path(src)
    config = require_file(src / "config.json", "checkpoint config", "point at a `make compress` output folder")
    if "quantization_config" not in config.read_text():
        raise UserError(f"{src} is not a compressed checkpoint (no quantization_config): train on it directly")
    compressed = AutoModelForCausalLM.from_pretrained(
        src, dtype=torch.float32, quantization_config=CompressedTensorsConfig(run_compressed=False)).eval()
    state = {k: v for k, v in compressed.state_dict().items() if not k.endswith(QUANTIZATION_TENSORS)}
    model_config = compressed.config
    model_config.__dict__.pop("quantization_config", None)
    dense = AutoModelForCausalLM.from_config(model_config, dtype=torch.float32)
    result = dense.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise UserError(f"{src}: the dense copy is missing {len(result.missing_keys)} tensors "
                        f"(e.g. {result.missing_keys[0]}); this compression format is not supported")
    tokenizer = AutoTokenizer.from_pretrained(src)
    batch = tokenizer(PROBE, return_tensors="pt")
    with torch.no_grad():
        diff = (dense.eval()(**batch).logits - compressed(**batch).logits).abs().max().item()
    if diff > tolerance:
        raise UserError(f"{src}: the dense copy's logits differ from the compressed model's by {diff:.3g}")
    with atomic_path(out, overwrite=overwrite) as tmp:
        dense.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        figures = {"max_abs_logit_diff": diff, "parameters": sum(p.numel() for p in dense.parameters())}
        write_manifest(tmp, "dequantize", {"compressed": src}, {"tolerance": tolerance}, figures, started)
    return figures


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.compress.dequantize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="compressed-tensors checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for the dense copy")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    figures = dequantize(args.model, args.out, args.overwrite)
    print(f"dense copy of {args.model} -> {args.out}: max |logit diff| {figures['max_abs_logit_diff']:.3g}")


if __name__ == "__main__":
    run_cli(main)
