"""The project's record format: one JSON object per line with a `messages` list (role/content),
as Phase 0 writes it and every later stage reads it; and the one answer-token loss over such
records (the compression report's perplexity, the modifier report's held-out loss)."""

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


def answer_span(messages: list[dict], tokenizer, max_len: int) -> tuple[list[int], int] | None:
    """(the conversation's token ids with the chat template, the index of its last turn's first
    token) when that turn is the assistant's and the whole conversation fits `max_len` tokens;
    else None. Scoring from that index scores what the model was trained to write (prompt
    tokens are masked in training), not how well it guesses a user's question."""
    if messages[-1].get("role") != "assistant":
        return None
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    # a template that merges tokens across the prompt/answer boundary has no clean answer span
    if len(prompt_ids) < len(ids) <= max_len and ids[:len(prompt_ids)] == prompt_ids:
        return ids, len(prompt_ids)
    return None


def answer_tokens(data: Path, tokenizer, limit: int, seed: int, max_len: int) -> list[tuple[list[int], int]]:
    """answer_span of `limit` records of `data` (shuffled with `seed`) that have one."""
    conversations = load_conversations(data)
    random.Random(seed).shuffle(conversations)
    scored = []
    for messages in conversations:
        if len(scored) == limit:
            break
        span = answer_span(messages, tokenizer, max_len)
        if span is not None:
            scored.append(span)
    return scored


def answer_loss(model, scored: list[tuple[list[int], int]], desc: str, batch_size: int = 1) -> tuple[float, int]:
    """Mean negative log-likelihood per answer token of a loaded causal LM over `scored`
    (`answer_tokens`' pairs), and the number of answer tokens. Conversations are batched with
    right padding, masked out of attention and of the loss, so a batch scores each as it
    scores it alone."""
    import torch
    from tqdm import tqdm

    total_nll, total_tokens = 0.0, 0
    for at in tqdm(range(0, len(scored), batch_size), desc=desc, unit="batch"):
        batch = scored[at:at + batch_size]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.zeros((len(batch), width), dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        labels = torch.full_like(input_ids, -100)
        for row, (ids, start) in enumerate(batch):
            input_ids[row, :len(ids)] = torch.tensor(ids)
            attention[row, :len(ids)] = 1
            labels[row, start:len(ids)] = torch.tensor(ids[start:])
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(model.device), attention_mask=attention.to(model.device)).logits
            # position t predicts token t + 1; only answer tokens have a label
            total_nll += float(torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(model.device), reduction="sum"))
        total_tokens += int((labels[:, 1:] != -100).sum())
    return total_nll / total_tokens, total_tokens
