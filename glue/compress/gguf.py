"""Export a dense Hugging Face checkpoint to GGUF with llama.cpp's own converter, quantize it
with llama.cpp (through llama-cpp-python's bindings), and check every file against transformers.

Runs in the compression environment: `.venv-compress/bin/python -m glue.compress.gguf`. The converter
(`convert_hf_to_gguf.py`, its `conversion/` package and its own `gguf-py`) is not on PyPI; `make
setup` unpacks it from the llama-cpp-python sdist of the pinned version into
`.venv-compress/src/llama.cpp`, so converter and runtime come from the same llama.cpp commit.

The check loads each GGUF with llama-cpp-python and, on a few held-out prompts rendered with the
model's chat template, compares (1) the prompt's token ids with the Hugging Face tokenizer's,
(2) the greedy continuation with transformers' greedy continuation, and (3) top-1 agreement of
the next-token predictions along the transformers continuation (teacher forcing), which keeps
measuring after the first diverging token. The 16/32-bit file must reproduce the tokenizer
exactly and reach --min-agreement; quantized files must reproduce the tokenizer and their
agreement is reported (quantization error is what they are measured for, not a defect).

Everything is written into a temporary sibling folder and renamed into place at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

from glue.core.checkpoints import check_model_dir
from glue.core.io import UserError, atomic_path, require_file, run_cli
from glue.core.manifest import write_manifest
from glue.core.records import load_conversations

BASE_TYPES = ("f32", "f16", "bf16")
DEFAULT_TYPES = ("Q5_K_M", "Q4_K_M")
LOG = logging.getLogger("glue.compress.gguf")

# Pre-tokenizers llama.cpp implements, keyed by the `pre_tokenizer` entry of tokenizer.json.
# Used only when the converter does not know the tokenizer's fingerprint (a tokenizer trained
# here, like the tiny profile's); the token-id check then proves the mapping on real prompts.
KNOWN_PRE_TOKENIZERS = {
    "gpt-2": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": (
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
            "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
}


def quant_types() -> dict[str, int]:
    """llama.cpp's file types by name (Q5_K_M -> 17), as llama-cpp-python exposes them."""
    import llama_cpp

    prefix = "LLAMA_FTYPE_MOSTLY_"
    return {name[len(prefix):]: value for name, value in vars(llama_cpp).items()
            if name.startswith(prefix) and isinstance(value, int)}


def check_types(types: list[str]) -> list[str]:
    known = quant_types()
    unknown = [t for t in types if t not in known]
    if unknown:
        raise UserError(f"unknown GGUF type(s) {', '.join(unknown)}; llama.cpp knows: {', '.join(sorted(known))}")
    if len(set(types)) != len(types):
        raise UserError(f"GGUF type listed twice: {types}")
    return types


def pre_tokenizer_name(model_dir: Path) -> str | None:
    tokenizer_json = Path(model_dir) / "tokenizer.json"
    if not tokenizer_json.is_file():
        return None
    pre = json.loads(tokenizer_json.read_text()).get("pre_tokenizer")
    return next((name for name, spec in KNOWN_PRE_TOKENIZERS.items() if spec == pre), None)


@contextlib.contextmanager
def llama_cpp_converter(converter_dir: Path) -> Iterator:
    """Import llama.cpp's converter from `converter_dir`, with one fallback added: a BPE
    tokenizer whose fingerprint the converter does not list, but whose pre-tokenizer is one
    llama.cpp implements (KNOWN_PRE_TOKENIZERS), is converted with that pre-tokenizer instead
    of failing with "BPE pre-tokenizer was not recognized". Undone on exit."""
    script = require_file(Path(converter_dir) / "convert_hf_to_gguf.py", "llama.cpp converter",
                          "run `make setup` (it unpacks the converter into .venv-compress/src/llama.cpp)")
    sys.path.insert(0, str(script.parent))
    try:
        import convert_hf_to_gguf
        from conversion.base import TextModel

        original = TextModel.get_vocab_base_pre

        def get_vocab_base_pre(self, tokenizer) -> str:
            try:
                return original(self, tokenizer)
            except NotImplementedError:
                name = pre_tokenizer_name(self.dir_model)
                if name is None:
                    raise UserError(f"{self.dir_model}/tokenizer.json: llama.cpp's converter does not know this "
                                    "tokenizer and its pre_tokenizer is none of " + ", ".join(KNOWN_PRE_TOKENIZERS)) from None
                LOG.warning("the converter's warning above is handled: tokenizer.json's pre_tokenizer is llama.cpp's "
                            "%r, used instead; the token ids are checked against the tokenizer below", name)
                return name

        TextModel.get_vocab_base_pre = get_vocab_base_pre
        try:
            yield convert_hf_to_gguf
        finally:
            TextModel.get_vocab_base_pre = original
    finally:
        sys.path.remove(str(script.parent))


def convert(model_dir: Path, out_file: Path, base_type: str, converter_dir: Path) -> None:
    """HF checkpoint -> one GGUF file of `base_type` (f32, f16 or bf16), by llama.cpp's converter."""
    with llama_cpp_converter(converter_dir) as converter:
        argv = sys.argv
        sys.argv = ["convert_hf_to_gguf.py", str(model_dir), "--outfile", str(out_file), "--outtype", base_type]
        try:
            converter.main()
        except SystemExit as exc:
            if exc.code:
                raise UserError(f"llama.cpp's converter failed on {model_dir} (exit {exc.code}); see its log above") from None
        finally:
            sys.argv = argv
    if not out_file.is_file():
        raise UserError(f"llama.cpp's converter wrote no {out_file}")


def quantize(src: Path, dst: Path, type_name: str, threads: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant_types()[type_name]
    params.nthread = threads
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise UserError(f"llama.cpp could not quantize {src.name} to {type_name} (code {rc}); "
                        "IQ* types need an importance matrix, which this stage does not compute")


def tensor_types(path: Path) -> dict[str, int]:
    """How many tensors of each ggml type the file holds: K-quants fall back to other types on
    rows not divisible by 256, which the file name does not say."""
    from gguf import GGUFReader  # the converter's gguf-py, on sys.path inside llama_cpp_converter

    return dict(Counter(t.tensor_type.name for t in GGUFReader(path).tensors))


def prompts_from(data: Path, tokenizer, count: int) -> list[tuple[str, list[int]]]:
    """Token ids of the first user turn of the first `count` records, as a generation prompt."""
    prompts = []
    for messages in load_conversations(data)[:count]:
        user = next((m for m in messages if m.get("role") == "user"), None)
        if user is None:
            continue
        text = tokenizer.apply_chat_template([user], add_generation_prompt=True, tokenize=False)
        prompts.append((text, tokenizer(text, add_special_tokens=False)["input_ids"]))
    if not prompts:
        raise UserError(f"{data}: no record with a user turn to prompt with")
    return prompts


def load_reference(model_dir: Path):
    """The transformers model the GGUF files are checked against: fp32 on CPU, its own dtype on a GPU."""
    import torch
    from transformers import AutoModelForCausalLM

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32 if device == "cpu" else "auto")
    return model.to(device).eval()


def greedy_continuations(model, prompts: list[tuple[str, list[int]]], max_new_tokens: int) -> list[list[int]]:
    """A transformers (or peft) model's greedy continuation of each prompt."""
    import torch

    continuations = []
    with torch.no_grad():
        for _, ids in prompts:
            out = model.generate(torch.tensor([ids], device=model.device), do_sample=False, max_new_tokens=max_new_tokens,
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=model.device))
            continuations.append(out[0, len(ids):].tolist())
    return continuations


def reference_continuations(model_dir: Path, prompts: list[tuple[str, list[int]]],
                            max_new_tokens: int) -> tuple[list[list[int]], int]:
    """transformers' greedy continuation of each prompt, and the model's parameter count."""
    model = load_reference(model_dir)
    return greedy_continuations(model, prompts, max_new_tokens), sum(p.numel() for p in model.parameters())


def load_gguf(path: Path, n_ctx: int, threads: int, logits_all: bool = True):
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all, n_threads=threads, verbose=False)


def lm_eval_model(path: Path, max_length: int = 8192, threads: int = 2):
    """An lm-eval model over a GGUF file, run in-process by llama-cpp-python, so that
    `glue.eval.evaluate` runs a suite on GGUF files as on checkpoints. It does what lm-eval's HFLM
    does for generative tasks: greedy `generate_until`, the chat template stored in the file
    (rendered by llama-cpp-python's Jinja2 formatter; a prefilled assistant turn is left open, as
    transformers' `continue_final_message` does), the prompt tokenized as `make gguf` checked it
    (no added BOS, special tokens parsed) and cut on the left to the trained context (at most
    `max_length`) less the tokens to generate. Tasks scored by log-likelihood are refused:
    lm-eval's own `gguf` model does those through a llama.cpp server."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from lm_eval.api.model import LM
    from tqdm import tqdm

    path = Path(path)
    metadata = Llama(model_path=str(path), vocab_only=True, verbose=False).metadata
    trained = metadata.get(f"{metadata.get('general.architecture', 'llama')}.context_length")
    max_length = min(max_length, int(trained)) if trained else max_length
    # Context beyond the trained length: llama-cpp-python 0.3.36 does not stop at max_tokens while
    # the text ends inside a UTF-8 character, so an answer that reaches the limit on a character's
    # lead byte runs on for its continuation bytes and needs more cells than the prompt and
    # max_tokens fill ("failed to find a memory slot" on `make demo`'s 9th full-context gsm8k
    # request). llama.cpp rounds the context up to a multiple of 256, so the one cell asked for
    # here buys up to 255 (tests/compress/test_gguf.py reproduces the failure without it).
    llm = load_gguf(path, max_length + 1, threads, logits_all=False)
    template = llm.metadata.get("tokenizer.chat_template")
    special = {name: llm.detokenize([token], special=True).decode(errors="replace") if token >= 0 else ""
               for name, token in (("bos_token", llm.token_bos()), ("eos_token", llm.token_eos()))}

    class LlamaCppLM(LM):
        def __init__(self):
            super().__init__()
            self.formatters = {flag: Jinja2ChatFormatter(template, add_generation_prompt=flag, **special)
                               for flag in (True, False)} if template else {}

        @property
        def tokenizer_name(self) -> str:
            return path.name

        def chat_template(self, chat_template: bool | str = False) -> str | None:
            return template

        def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
            if not self.formatters:
                raise UserError(f"{path}: no chat template in the GGUF metadata; set `apply_chat_template: false` "
                                "in the suite")
            prompt = self.formatters[add_generation_prompt](messages=chat_history).prompt
            if add_generation_prompt:
                return prompt
            final = chat_history[-1]["content"].strip()  # end the prompt where the prefilled turn ends
            return prompt[:prompt.rindex(final) + len(final)] if final in prompt else prompt

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            answers = []
            for request in tqdm(requests, desc=f"generate {path.name}", disable=disable_tqdm):
                context, gen_kwargs = request.args
                until = gen_kwargs.get("until") or []
                max_new = int(gen_kwargs.get("max_gen_toks", 256))
                ids = llm.tokenize(context.encode(), add_bos=not context.startswith(special["bos_token"] or "\0"),
                                   special=True)[-(max_length - max_new):]
                completion = llm.create_completion(ids, max_tokens=max_new, temperature=0.0, top_k=1,
                                                   repeat_penalty=1.0, stop=[until] if isinstance(until, str) else until)
                answers.append(completion["choices"][0]["text"])
            return answers

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            raise UserError(f"{path.name}: this suite has a log-likelihood task; GGUF files are evaluated on "
                            "generative tasks only (or serve the file with llama.cpp and use lm-eval's `gguf` model)")

        loglikelihood_rolling = loglikelihood

    return LlamaCppLM()


def perplexity(path: Path, scored: list[tuple[list[int], int]], threads: int = 2) -> tuple[float, int]:
    """Perplexity of a GGUF file on the answer tokens of `scored`, scored like the Hugging Face
    checkpoints in glue/compress/report.py; returns (ppl, answer tokens)."""
    import numpy as np
    from tqdm import tqdm

    llm = load_gguf(path, max(len(ids) for ids, _ in scored), threads)
    total_nll, total_tokens = 0.0, 0
    for ids, start in tqdm(scored, desc=f"perplexity {path.name}", unit="record"):
        llm.reset()
        llm.eval(ids)
        logits = llm.scores[start - 1:len(ids) - 1].astype(np.float64)  # position t predicts token t + 1
        top = logits.max(axis=1)
        log_norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
        total_nll += float((log_norm - logits[np.arange(len(logits)), ids[start:]]).sum())
        total_tokens += len(ids) - start
    return math.exp(total_nll / total_tokens), total_tokens


def context_size(prompts: list[tuple[str, list[int]]], references: list[list[int]]) -> int:
    """llama.cpp context that holds the longest prompt with its reference continuation."""
    return max(len(ids) + len(ref) for (_, ids), ref in zip(prompts, references)) + 8


def teacher_forced_logits(llm, ids: list[int], ref: list[int]):
    """llama.cpp's next-token logits at each token of `ref` fed after `ids` (row t predicts ref[t])."""
    import numpy as np

    llm.reset()
    llm.eval(ids + ref)
    return np.array(llm.scores[len(ids) - 1:len(ids) + len(ref) - 1])


def agreement(llm, prompts: list[tuple[str, list[int]]], references: list[list[int]]) -> tuple[dict, list]:
    """Token ids, greedy continuations and teacher-forced top-1 agreement of a loaded GGUF model
    (a Llama with logits_all), and the teacher-forced logits of each prompt with a reference."""
    import numpy as np

    tokens_match = greedy_match = agree = positions = 0
    prefix, logits = [], []
    for (text, ids), ref in zip(prompts, references):
        tokens_match += llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        generated = []
        for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            generated.append(token)
            if len(generated) == len(ref) or llm.token_eos() == token:
                break
        greedy_match += generated == ref
        prefix.append(next((i for i, (a, b) in enumerate(zip(generated, ref)) if a != b), min(len(generated), len(ref))))
        if ref:
            logits.append(teacher_forced_logits(llm, ids, ref))
            agree += int((np.argmax(logits[-1], axis=1) == np.array(ref)).sum())
            positions += len(ref)
    n = len(prompts)
    return {"prompts": n, "tokenizer_match": tokens_match / n, "greedy_exact_match": greedy_match / n,
            "greedy_mean_common_prefix": round(sum(prefix) / n, 2),
            "top1_agreement": round(agree / positions, 4) if positions else None}, logits


def compare(path: Path, prompts: list[tuple[str, list[int]]], references: list[list[int]], threads: int) -> dict:
    """Token ids, greedy continuations and teacher-forced top-1 agreement of one GGUF file."""
    return agreement(load_gguf(path, context_size(prompts, references), threads), prompts, references)[0]


def export(model_dir: Path, out: Path, types: list[str], data: Path, converter_dir: Path, base_type: str = "f16",
           prompts: int = 4, max_new_tokens: int = 24, min_agreement: float = 0.95, threads: int = 2,
           overwrite: bool = False) -> dict:
    started = time.time()
    model_dir = Path(model_dir)
    if base_type not in BASE_TYPES:
        raise UserError(f"--base-type must be one of {', '.join(BASE_TYPES)}, got {base_type!r}")
    check_model_dir(model_dir, dense="llama.cpp's converter takes a dense checkpoint: the merged model, or a dense copy from `make dequantize`")
    types = check_types(types)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = prompts_from(data, tokenizer, prompts)
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.mkdir()
        files = {base_type: tmp / f"model-{base_type}.gguf"}
        convert(model_dir, files[base_type], base_type, converter_dir)
        for type_name in types:
            files[type_name] = tmp / f"model-{type_name}.gguf"
            quantize(files[base_type], files[type_name], type_name, threads)
        references, params = reference_continuations(model_dir, prompt_ids, max_new_tokens)
        figures = {}
        with llama_cpp_converter(converter_dir):
            for type_name, path in files.items():
                check = compare(path, prompt_ids, references, threads)
                figures[path.name] = {"type": type_name, "bytes": path.stat().st_size,
                                      "bits_per_param": round(8 * path.stat().st_size / params, 3),
                                      "tensor_types": tensor_types(path), **check}
                LOG.info("%s: %s", path.name, check)
        base = figures[files[base_type].name]
        if base["tokenizer_match"] < 1.0:
            raise UserError(f"the {base_type} GGUF tokenizes the prompts differently from {model_dir}'s tokenizer: "
                            "the converter chose the wrong pre-tokenizer")
        if base["top1_agreement"] is not None and base["top1_agreement"] < min_agreement:
            raise UserError(f"the {base_type} GGUF agrees with transformers on {base['top1_agreement']:.3f} of "
                            f"next tokens (< --min-agreement {min_agreement}): the conversion is wrong")
        bad = [name for name, f in figures.items() if f["tokenizer_match"] < 1.0]
        if bad:
            raise UserError(f"{', '.join(bad)}: tokenizer differs from the {base_type} file's")
        (tmp / "check.json").write_text(json.dumps(figures, indent=2) + "\n")
        write_manifest(tmp, "gguf", {"model": model_dir, "prompts": data},
                       {"base_type": base_type, "types": types, "prompts": len(prompt_ids),
                        "max_new_tokens": max_new_tokens, "min_agreement": min_agreement,
                        "converter": str(converter_dir), "num_parameters": params}, figures, started)
    return figures


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.compress.gguf", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="dense Hugging Face checkpoint folder")
    parser.add_argument("--out", type=Path, required=True, help="folder for model-<type>.gguf, check.json, manifest.json")
    parser.add_argument("--types", default=",".join(DEFAULT_TYPES), help="comma-separated llama.cpp types")
    parser.add_argument("--base-type", default="f16", help="type the converter writes before quantizing: f32, f16, bf16")
    parser.add_argument("--data", type=Path, required=True, help="held-out JSONL split; its first user turns are the check prompts")
    parser.add_argument("--converter", type=Path, default=Path(".venv-compress/src/llama.cpp"))
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--min-agreement", type=float, default=0.95,
                        help="least top-1 agreement of the 16/32-bit file with transformers")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    figures = export(args.model, args.out, [t.strip() for t in args.types.split(",") if t.strip()], args.data,
                     args.converter, args.base_type, args.prompts, args.max_new_tokens, args.min_agreement,
                     args.threads, args.overwrite)
    for name, f in figures.items():
        print(f"{name:24s} {f['bytes'] / 1e6:9.2f} MB  tokenizer {f['tokenizer_match']:.2f}  "
              f"greedy exact {f['greedy_exact_match']:.2f}  top-1 agreement {f['top1_agreement']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    run_cli(main)
