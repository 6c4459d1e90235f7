"""Build the tiny profile's base model: a small Llama with a BPE tokenizer trained offline on
the bundled instruction data, pretrained briefly on the generated world (glue/core/tiny_world.py)
so that it knows a little before 1A, saved like a hub checkpoint.

It has the real model's shape of interfaces (LlamaForCausalLM, Llama-3 special tokens and
chat template, untied LM head, grouped-query attention) at a size a 2-core CPU trains in
minutes. hidden_size >= 128 and intermediate_size >= 256 because llm-compressor's W4A16
presets quantize in groups of 128. Digits stay single tokens (the tokenizer never learns a
merge with a digit in it), as arithmetic is learnable digit by digit and not over a table of
merged numbers.

The build is seeded, and with --cache it is kept per machine under a key of everything that
shapes it (this file, the world's generator, the corpus, the arguments, torch and transformers
versions): a second build is a copy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

from glue.core import tiny_world
from glue.core.io import UserError, atomic_path, iter_jsonl, require_file, run_cli
from glue.core.manifest import write_manifest

# Llama-3.1's special tokens, so the tiny model speaks the same chat format as the real one.
BOS, EOS_TEXT, PAD, UNK = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<unk>"
START_HEADER, END_HEADER, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS_TEXT, START_HEADER, END_HEADER, EOT, PAD, UNK]

SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


# Pretraining: the world's training split with hard cells as rare as in the curated set (so the
# base is weak exactly where 1B should look), written as plain "Question: ... Answer:" text and
# never in the chat template. The base so knows the skills but not how to answer in chat, as a
# pretrained base knows facts it cannot yet use as an assistant: 1A's LoRA teaches that, and
# the suite shows it. (The corpus's prose trains the tokenizer only: its long rows would pad
# every batch to their length and make pretraining several times slower.)
PRETRAIN = {"tasks": 6000, "hard_share": 0.2, "steps": 1500, "batch_size": 32, "learning_rate": 3e-3,
            "world_seed": 7}


def corpus_records(corpus: Path) -> list[dict]:
    records = [r for r in iter_jsonl(corpus) if r.get("messages")]
    if not records:
        raise UserError(f"{corpus}: no records with `messages` to train the tokenizer on")
    return records


def tokenizer_texts(records: list[dict], tasks: list[tiny_world.Task]) -> list[str]:
    texts = [str(m.get("content", "")) for r in records for m in r["messages"]]
    texts += [text for t in tasks for text in (t.prompt, t.answer)]
    return [re.sub(r"\d", " ", text) for text in texts]


def build_tokenizer(texts: list[str], vocab_size: int):
    from axolotl.utils.chat_templates import get_chat_template
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # any byte encodes, no <unk> in practice
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOT,  # Llama-3.1-Instruct ends an assistant turn with <|eot_id|>
        pad_token=PAD,
        unk_token=UNK,
        chat_template=get_chat_template("llama3"),
        model_max_length=SHAPE["max_position_embeddings"],
    )


def pretrain(model, tokenizer, tasks: list[tiny_world.Task], steps: int, seed: int) -> list[float]:
    """Train every weight on the tasks' answers (plain text, the question's tokens masked) with
    transformers' Trainer; the logged losses."""
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    def encode(task: tiny_world.Task) -> dict:
        prompt = f"Question: {task.prompt}\nAnswer: "
        full = prompt + task.answer + EOT
        ids = tokenizer(full, add_special_tokens=False)["input_ids"]
        masked = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": [-100] * masked + ids[masked:]}

    rows = [encode(t) for t in tasks]
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(
            output_dir=scratch, max_steps=steps, per_device_train_batch_size=PRETRAIN["batch_size"],
            learning_rate=PRETRAIN["learning_rate"], lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20),
            weight_decay=0.0, logging_steps=max(1, steps // 10), save_strategy="no", report_to=[],
            use_cpu=True, seed=seed, data_seed=seed, dataloader_num_workers=0, disable_tqdm=False)
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                          data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100))
        trainer.train()
    return [round(e["loss"], 4) for e in trainer.state.log_history if "loss" in e]


def cache_key(corpus: Path, vocab_size: int, seed: int, steps: int) -> str:
    import torch
    import transformers

    digest = hashlib.sha256()
    for path in (Path(__file__), Path(tiny_world.__file__), corpus):
        digest.update(path.read_bytes())
    digest.update(json.dumps([vocab_size, seed, steps, SHAPE, PRETRAIN, torch.__version__,
                              transformers.__version__]).encode())
    return digest.hexdigest()[:16]


def build_tiny_model(out: Path, corpus: Path, vocab_size: int = 2048, seed: int = 0, overwrite: bool = False,
                     steps: int = PRETRAIN["steps"], cache: Path | None = None) -> dict:
    """Write the tiny Llama checkpoint (fp32 safetensors + tokenizer) to `out`, pretrained for
    `steps` steps (0: random weights); from `cache` when it already holds this exact build."""
    corpus = require_file(corpus, "tokenizer corpus", "it ships with the repository under tests/fixtures/")
    cached = cache / cache_key(corpus, vocab_size, seed, steps) if cache else None
    if cached is not None and (cached / "config.json").is_file():
        with atomic_path(out, overwrite=overwrite) as tmp:
            shutil.copytree(cached, tmp)
        print(f"tiny model: copied from the cache {cached}")
        return json.loads((out / "manifest.json").read_text())["figures"]

    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.time()
    records = corpus_records(corpus)
    tasks = tiny_world.generate(PRETRAIN["tasks"], PRETRAIN["world_seed"], hard_share=PRETRAIN["hard_share"])
    tokenizer = build_tokenizer(tokenizer_texts(records, tasks), vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
        **SHAPE,
    )
    model = LlamaForCausalLM(config)
    losses = pretrain(model, tokenizer, tasks, steps, seed) if steps else []
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    with atomic_path(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        figures = {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
                   "pretrain_losses": losses, "seconds": round(time.time() - started, 1)}
        write_manifest(tmp, "tiny_model", {"corpus": corpus},
                       {"seed": seed, "vocab_size": vocab_size, "steps": steps, **SHAPE, "pretrain": PRETRAIN},
                       figures, started)
    if cached is not None:
        with atomic_path(cached, overwrite=True) as tmp:
            shutil.copytree(out, tmp)
    return figures


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.train.tiny_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the checkpoint to")
    parser.add_argument("--corpus", type=Path, required=True, help="JSONL with `messages` to train the tokenizer on")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=PRETRAIN["steps"],
                        help="pretraining steps on the generated world (0: random weights; default %(default)s)")
    parser.add_argument("--cache", type=Path, help="per-machine cache folder: reuse an identical earlier build")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    args = parser.parse_args(argv)
    figures = build_tiny_model(args.out, args.corpus, args.vocab_size, args.seed, args.overwrite, args.steps, args.cache)
    print(f"tiny model: {figures['parameters']:,} parameters, vocab {figures['vocab_size']} -> {args.out}")
    print(json.dumps(figures))


if __name__ == "__main__":
    run_cli(main)
