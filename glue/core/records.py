"""The project's record format: one JSON object per line with a `messages` list (role/content),
as Phase 0 writes it and every later stage reads it."""

from __future__ import annotations

import random
from pathlib import Path

from glue.core.io import UserError, iter_jsonl, require_file


def load_conversations(data: Path) -> list[list[dict]]:
    """The `messages` list of every record of a JSONL split."""
    conversations = []
    for record in iter_jsonl(require_file(data, "data split", "run `make data` first")):
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            raise UserError(f"{data}: record {record.get('id', '?')!r} has no `messages` list")
        conversations.append(messages)
    if not conversations:
        raise UserError(f"{data}: no records")
    return conversations


def render_records(data: Path, tokenizer, limit: int, seed: int) -> list[str]:
    """`limit` records of `data` (shuffled with `seed`), rendered with the chat template."""
    conversations = load_conversations(data)
    random.Random(seed).shuffle(conversations)
    return [tokenizer.apply_chat_template(m, tokenize=False) for m in conversations[:limit]]


def answer_tokens(data: Path, tokenizer, limit: int, seed: int, max_len: int) -> list[tuple[list[int], int]]:
    """For `limit` records of `data` (shuffled with `seed`) that end with an assistant turn and
    fit `max_len` tokens: (the conversation's token ids with the chat template, the index of
    that turn's first token). Scoring from that index scores what the model was trained to
    write (prompt tokens are masked in training), not how well it guesses a user's question."""
    conversations = load_conversations(data)
    random.Random(seed).shuffle(conversations)
    scored = []
    for messages in conversations:
        if len(scored) == limit:
            break
        if messages[-1].get("role") != "assistant":
            continue
        prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
        if len(prompt_ids) < len(ids) <= max_len and ids[:len(prompt_ids)] == prompt_ids:
            scored.append((ids, len(prompt_ids)))
    return scored
