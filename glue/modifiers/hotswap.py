"""Phase 3's loader: one base model loaded with transformers, every domain modifier attached to it
with peft, and the one a request names switched on for that request (`base` for none).

An adapter is a correction to the exact weights it was trained over, so the loader refuses one
whose base is not the base it is applied to: the adapter's recorded base (adapter_config.json's
`base_model_name_or_path`, compared as the merge guard compares it) and, when `make modifier`
recorded it, the SHA-256 of the base's files at training time (`record`, written into the
adapter folder's manifest.json by the project's manifest code) against the base's files now. A
base rebuilt in place (1C retrained and merged again) keeps its path and changes its hash.

  python -m glue.modifiers.hotswap record axolotl_configs/tiny/3_modifier_code.yml
  python -m glue.modifiers.hotswap ask --base work/tiny/1c_distill/merged \\
      --adapter code=work/tiny/modifiers/code/adapter --request "code=Write a Python function ..."
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Iterator

from glue.core.checkpoints import adapter_base_mismatch, check_model_dir, finished_run
from glue.core.io import UserError, load_yaml, require_file, run_cli, sha256_path
from glue.core.manifest import write_manifest

BASE = "base"  # the request name that switches every modifier off
STAGE = "3_modifier"
FIX = ("serve it over the base it was trained on, or train it again over this one "
       "(`make modifier DOMAIN=<domain> OVERWRITE=1`)")


def record_base(config_path: str | Path, run_dir: str | Path | None = None) -> Path:
    """After training: write `<adapter>/manifest.json`, whose inputs hold the SHA-256 of the base
    the adapter was trained over (and of the adapter, config and data)."""
    started = time.time()
    config_path = Path(config_path)
    cfg = load_yaml(require_file(config_path, "modifier config", "render it with `make render`"))
    adapter_dir = Path(run_dir or cfg["output_dir"])
    if not finished_run(adapter_dir):
        raise UserError(f"{adapter_dir}: no finished adapter (adapter_model.safetensors) to record: train it first "
                        f"(`make train CONFIG={config_path}`)")
    base = str(cfg["base_model"])
    if mismatch := adapter_base_mismatch(adapter_dir, base, "the config's base_model",
                                         "record it with the config it was trained with"):
        raise UserError(mismatch)
    adapter = json.loads((adapter_dir / "adapter_config.json").read_text())
    weights = adapter_dir / "adapter_model.safetensors"
    target = write_manifest(
        adapter_dir, STAGE,
        {"base": base, "adapter": weights, "config": config_path, "train_data": cfg["datasets"][0]["path"]},
        {"base_model": base, "lora_r": adapter["r"],
         "lora_alpha": adapter["lora_alpha"], "target_modules": sorted(adapter["target_modules"])},
        {"adapter_bytes": weights.stat().st_size}, started)
    print(f"recorded the base of {adapter_dir}: {target}")
    return target


def base_problems(adapter_dir: str | Path, base: str | Path) -> list[str]:
    """Every reason the adapter in `adapter_dir` must not be applied to `base` (none: it may)."""
    adapter_dir = Path(adapter_dir)
    require_file(adapter_dir / "adapter_config.json", "adapter config",
                 "expected a modifier's adapter folder, e.g. work/<profile>/modifiers/<domain>/adapter")
    if not finished_run(adapter_dir):
        return [f"{adapter_dir}: no adapter_model.safetensors: its training has not finished"]
    if mismatch := adapter_base_mismatch(adapter_dir, str(base), "the base it is applied to", FIX):
        return [mismatch]
    manifest = adapter_dir / "manifest.json"
    if not manifest.is_file():
        print(f"note: {adapter_dir} has no manifest.json (`make modifier` writes it after training): "
              "the base's path was compared, not its files", file=sys.stderr)
        return []
    recorded = json.loads(manifest.read_text())["inputs"]["base"]
    if recorded["sha256"] is None:  # a hub id: its name is all there is to compare
        return []
    now = sha256_path(base)
    if recorded["sha256"] != now:
        return [f"{manifest}: the adapter was trained over `{recorded['path']}` when its files hashed to "
                f"{recorded['sha256'][:16]}..., but the base it is applied to, `{base}`, hashes to {now[:16]}... "
                f"now (rebuilt since?): {FIX}"]
    return []


class ModifierSet:
    """One base and its modifiers, each switched on per request."""

    def __init__(self, base: str | Path, adapters: dict[str, Path], dtype: str = "float32", device: str = "cpu"):
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not adapters:
            raise UserError("no modifiers to load: give at least one adapter folder")
        if BASE in adapters:
            raise UserError(f"`{BASE}` names the base alone; call the modifier something else")
        check_model_dir(base, dense="a modifier is applied to the full-precision weights it was trained over")
        problems = [p for path in adapters.values() for p in base_problems(path, base)]
        if problems:
            raise UserError("refusing to load the modifiers:\n  " + "\n  ".join(problems))
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype)).to(device)
        (first, first_path), *rest = adapters.items()
        self.model = PeftModel.from_pretrained(model, str(first_path), adapter_name=first).eval()
        for name, path in rest:
            self.model.load_adapter(str(path), adapter_name=name)
        self.names = [BASE, *adapters]

    @contextlib.contextmanager
    def switched(self, name: str) -> Iterator:
        """The model with modifier `name` on (`base`: all off), for the requests inside the block."""
        if name not in self.names:
            raise UserError(f"unknown modifier {name!r} (loaded: {', '.join(self.names)})")
        if name == BASE:
            with self.model.disable_adapter():
                yield self.model
        else:
            self.model.set_adapter(name)
            yield self.model

    def answer(self, name: str, prompt: str, max_new_tokens: int = 64) -> str:
        """Greedy answer to one chat prompt with modifier `name` on."""
        text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                  add_generation_prompt=True)
        batch = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        with self.switched(name) as model, self.torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def _pairs(values: list[str], what: str) -> list[tuple[str, str]]:
    pairs = [v.split("=", 1) for v in values]
    if bad := [v for v, p in zip(values, pairs) if len(p) != 2 or not p[0]]:
        raise UserError(f"{what} must be NAME=VALUE, got {bad[0]!r}")
    return [(name, value) for name, value in pairs]


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.modifiers.hotswap", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="after training: record the base's hash in the adapter's manifest.json")
    rec.add_argument("config", type=Path, help="the modifier's Axolotl config, axolotl_configs/<profile>/3_modifier_<domain>.yml")
    rec.add_argument("--run", type=Path, help="the adapter folder (default: the config's output_dir)")
    ask = sub.add_parser("ask", help="load a base and its modifiers once, answer each request with the one it names")
    ask.add_argument("--base", type=Path, required=True, help="the full-precision base the modifiers were trained over")
    ask.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="a modifier (repeatable)")
    ask.add_argument("--request", action="append", default=[], metavar="NAME=PROMPT",
                     help=f"a prompt and the modifier to answer it with, `{BASE}` for none (repeatable)")
    ask.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    if args.command == "record":
        record_base(args.config, args.run)
        return
    modifiers = ModifierSet(args.base, {name: Path(path) for name, path in _pairs(args.adapter, "--adapter")})
    for name, prompt in _pairs(args.request, "--request"):
        print(f"[{name}] {prompt}\n{modifiers.answer(name, prompt, args.max_new_tokens)}\n")


if __name__ == "__main__":
    run_cli(main)
