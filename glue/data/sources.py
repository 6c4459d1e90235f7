"""Load the instruction sources and map each one's own schema to the project's record
format. One adapter per schema; which source uses which adapter, and where its rows come
from (a hub dataset in the real profile, a bundled JSONL fixture in the tiny one), is data
in templates/data/sources.yml.

An adapter takes one raw row and returns its `messages`; a row that lacks what its schema
needs raises RowError and becomes a counted reject with its file:line (or hub row index).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from glue.core import tiny_world
from glue.core.io import UserError, iter_jsonl, require_file


class RowError(ValueError):
    """A raw row that cannot become a record (missing or mistyped fields)."""


def _text(row: dict, key: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None:
        if required:
            raise RowError(f"missing field {key!r}")
        return ""
    if not isinstance(value, str):
        raise RowError(f"field {key!r} is {type(value).__name__}, expected a string")
    return value.strip()


def _user_turn(instruction: str, extra: str) -> str:
    # The project's format: an instruction with an input is one user message, blank line between.
    return f"{instruction}\n\n{extra}" if extra else instruction


def openorca(row: dict) -> list[dict]:
    messages = []
    system = _text(row, "system_prompt", required=False)
    if system:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": _text(row, "question")})
    messages.append({"role": "assistant", "content": _text(row, "response")})
    return messages


def alpaca(row: dict) -> list[dict]:
    """Alpaca-GPT4 and CodeAlpaca-20k share this schema: instruction, input, output."""
    user = _user_turn(_text(row, "instruction"), _text(row, "input", required=False))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output")}]


def sharegpt(row: dict) -> list[dict]:
    """WizardLM evol-instruct: conversations = [{from: human|gpt, value}, ...]."""
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("missing field 'conversations' (a non-empty list)")
    roles = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or turn.get("from") not in roles:
            raise RowError(f"conversations[{i}]: expected {{from: human|gpt, value}}")
        messages.append({"role": roles[turn["from"]], "content": _text(turn, "value")})
    return messages


def dolly(row: dict) -> list[dict]:
    user = _user_turn(_text(row, "instruction"), _text(row, "context", required=False))
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "response")}]


def metamath(row: dict) -> list[dict]:
    return [{"role": "user", "content": _text(row, "query")},
            {"role": "assistant", "content": _text(row, "response")}]


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def hh_dialogue(row: dict) -> list[dict]:
    """Anthropic-HH: the `chosen` dialogue string, "\\n\\nHuman: ...\\n\\nAssistant: ..."."""
    text = row.get("chosen")
    if not isinstance(text, str):
        raise RowError("missing field 'chosen' (a dialogue string)")
    parts = _HH_TURN.split(text)
    if parts[0].strip() or len(parts) < 3:
        raise RowError("'chosen' does not start with '\\n\\nHuman: '")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[speaker], "content": content.strip()}
            for speaker, content in zip(parts[1::2], parts[2::2])]


ADAPTERS: dict[str, Callable[[dict], list[dict]]] = {
    "openorca": openorca,
    "alpaca": alpaca,
    "sharegpt": sharegpt,
    "dolly": dolly,
    "metamath": metamath,
    "hh_dialogue": hh_dialogue,
}


def check_messages(messages: list[dict]) -> None:
    """The shape every record must have to train: user/assistant turns, ending on a non-empty answer."""
    body = [m for m in messages if m["role"] != "system"]
    if not body or body[0]["role"] != "user" or body[-1]["role"] != "assistant":
        raise RowError("empty row: needs a user turn first and an assistant turn last")
    for m in body:
        if not m["content"]:
            raise RowError(f"empty {m['role']} message")
    for a, b in zip(body, body[1:]):
        if a["role"] == b["role"]:
            raise RowError(f"two {a['role']} turns in a row")


def content_id(source: str, messages: list[dict]) -> str:
    """An id that depends on the row's content only, so it survives reordering upstream."""
    digest = hashlib.sha1(json.dumps(messages, ensure_ascii=False, sort_keys=True).encode()).hexdigest()
    return f"{source}-{digest[:16]}"


@dataclass
class Loaded:
    """One source's records in load order, and the rows that could not become records."""
    origin: str  # the file, or hub[split]
    fingerprint: str | None = None  # a hub dataset's datasets fingerprint (a file is hashed by the manifest)
    records: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    rows_read: int = 0


def generated_world(name: str, spec: dict) -> Loaded:
    """The tiny profile's generated tasks (glue/core/tiny_world.py), each record already tagged
    with its domain: a source without a file, rebuilt identically from its seed."""
    tasks = tiny_world.generate(int(spec["rows"]), int(spec["seed"]), hard_share=float(spec["hard_share"]))
    out = Loaded(origin=f"glue.core.tiny_world seed {spec['seed']}")
    for index, task in enumerate(tasks):
        messages = [{"role": "user", "content": task.prompt}, {"role": "assistant", "content": task.answer}]
        out.records.append({"id": content_id(name, messages), "source": name, "domain": task.domain,
                            "messages": messages, "where": f"{out.origin} task {index}"})
    out.rows_read = len(out.records)
    return out


def hub_dataset(hub: str, split: str):
    import datasets

    try:
        return datasets.load_dataset(hub, split=split)
    except Exception as exc:  # any loader failure is the user's to fix (network, name, auth)
        raise UserError(f"source {hub!r} split {split!r} failed to load: {type(exc).__name__}: {exc}") from None


def load_source(name: str, spec: dict, root: Path) -> Loaded:
    """Read one source (spec from sources.yml) and map its rows to records."""
    if "world" in spec:
        return generated_world(name, spec["world"])
    adapter = ADAPTERS.get(spec.get("adapter"))
    if adapter is None:
        raise UserError(f"source {name!r}: unknown adapter {spec.get('adapter')!r} (known: {', '.join(ADAPTERS)})")
    if "fixture" in spec:
        path = require_file(root / spec["fixture"], f"source {name!r} file", "see templates/data/sources.yml")
        out = Loaded(origin=str(path))
        rows = iter_jsonl(path, with_location=True, on_error=lambda where, message: reject(
            where, f"not a JSON object line: {message[len(where) + 2:]}"))
    else:
        split = spec.get("split", "train")
        dataset = hub_dataset(spec["hub"], split)
        out = Loaded(origin=f"{spec['hub']}[{split}]", fingerprint=dataset._fingerprint)
        rows = ((f"{out.origin} row {index}", row) for index, row in enumerate(dataset))

    def reject(where: str, reason: str, row: dict | None = None) -> None:
        out.rejects.append({"source": name, "where": where, "step": "load", "reason": reason, "row": row})

    seen: dict[str, int] = {}
    for where, row in rows:
        try:
            messages = adapter(row)
            check_messages(messages)
        except RowError as exc:
            reject(where, str(exc), row)
            continue
        record_id = content_id(name, messages)
        # An exact repeat inside one source gets a suffix so every id is unique; dedup removes it.
        seen[record_id] = seen.get(record_id, 0) + 1
        if seen[record_id] > 1:
            record_id = f"{record_id}-{seen[record_id]}"
        record = {"id": record_id, "source": name, "messages": messages, "where": where}
        if isinstance(row.get("category"), str):
            record["category"] = row["category"]
        out.records.append(record)
    out.rows_read = len(out.records) + len(out.rejects)
    if out.rows_read == 0:
        raise UserError(f"source {name!r}: {out.origin} has no rows (empty file or empty split)")
    if not out.records:
        raise UserError(f"source {name!r}: none of {out.origin}'s {out.rows_read} rows is usable; "
                        f"first problem: {out.rejects[0]['where']}: {out.rejects[0]['reason']}")
    return out
