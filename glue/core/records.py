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
