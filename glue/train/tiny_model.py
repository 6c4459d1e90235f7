"""Build the tiny profile's base model: a Llama with random, seeded weights and a BPE
tokenizer trained offline on the bundled instruction data, saved like a hub checkpoint.

It has the real model's shape of interfaces (LlamaForCausalLM, Llama-3 special tokens and
chat template, untied LM head, grouped-query attention) at a size a 2-core CPU trains in
seconds. hidden_size >= 128 and intermediate_size >= 256 because llm-compressor's W4A16
presets quantize in groups of 128.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from glue.core.io import UserError, atomic_path, iter_jsonl, require_file, run_cli
from glue.core.manifest import write_manifest

# Llama-3.1's special tokens, so the tiny model speaks the same chat format as the real one.
BOS, EOS_TEXT, PAD, UNK = "<|begin_of_text|>", "<|end_of_text|>", "<|finetune_right_pad_id|>", "<unk>"
START_HEADER, END_HEADER, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS_TEXT, START_HEADER, END_HEADER, EOT, PAD, UNK]

SHAPE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


def corpus_texts(corpus: Path) -> list[str]:
    texts = []
    for record in iter_jsonl(corpus):
        for message in record.get("messages", []):
            texts.append(str(message.get("content", "")))
    if not texts:
        raise UserError(f"{corpus}: no message text to train the tokenizer on")
    return texts


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


def build_tiny_model(out: Path, corpus: Path, vocab_size: int = 2048, seed: int = 0,
                     overwrite: bool = False) -> dict:
    """Write a tiny Llama checkpoint (fp32 safetensors + tokenizer) to `out`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    started = time.time()
    corpus = require_file(corpus, "tokenizer corpus", "it ships with the repository under tests/fixtures/")
    tokenizer = build_tokenizer(corpus_texts(corpus), vocab_size)
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
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    with atomic_path(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        figures = {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer)}
        write_manifest(tmp, "tiny_model", {"corpus": corpus},
                       {"seed": seed, "vocab_size": vocab_size, **SHAPE}, figures, started)
    return figures


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.train.tiny_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write the checkpoint to")
    parser.add_argument("--corpus", type=Path, required=True, help="JSONL with `messages` to train the tokenizer on")
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    args = parser.parse_args(argv)
    figures = build_tiny_model(args.out, args.corpus, args.vocab_size, args.seed, args.overwrite)
    print(f"tiny model: {figures['parameters']:,} parameters, vocab {figures['vocab_size']} -> {args.out}")
    print(json.dumps(figures))


if __name__ == "__main__":
    run_cli(main)
