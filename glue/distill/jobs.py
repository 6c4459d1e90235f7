"""Resumable calls for phase 1C: every call's result is appended to `<out>/calls.jsonl` under a
key (kind, cluster, prompt hash, model, parameters) the moment it returns, and flushed to disk,
so a rerun after a crash or Ctrl-C skips what is done, and outputs built from the log in sorted
order are byte-identical to an uninterrupted run's. Calls that failed (timeout, a 5xx after the
client's retries, an empty or malformed body) are asked again by the next run; so are the calls
in flight at a kill, whose answers died with the process. The budget counts every run's spend;
reaching it stops the stage cleanly with all results kept.

One run writes a log at a time: a run whose parent was killed (SIGKILL or a timeout on `make`
does not reach make's child) lives on and keeps calling, and a rerun started meanwhile waits for
it rather than making the same pending calls alongside it.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from tqdm import tqdm

from glue.core.io import iter_jsonl, write_jsonl_atomic


class BudgetReached(Exception):
    pass


@dataclass
class Job:
    kind: str                 # answer | new | critique | score | consistency
    cluster_id: int
    domain: str
    messages: list[dict]
    params: dict
    meta: dict = field(default_factory=dict)
    key: str = ""

    def keyed(self, model: str) -> "Job":
        prompt_hash = hashlib.sha256(json.dumps(self.messages, sort_keys=True).encode()).hexdigest()
        blob = json.dumps([self.kind, self.cluster_id, prompt_hash, model, self.params], sort_keys=True)
        self.key = hashlib.sha256(blob.encode()).hexdigest()[:32]
        return self


def _hold_lock(path: Path, log: Path) -> IO[str]:
    """Take `path`'s exclusive lock, waiting while another process holds it. The kernel releases
    it when its holder dies, however it dies."""
    fh = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "unknown"
        print(f"{log} is being written by another run of this stage (pid {holder}): waiting for it to "
              "finish, then resuming from what it logged", file=sys.stderr, flush=True)
        fcntl.flock(fh, fcntl.LOCK_EX)
    fh.truncate(0)
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


class CallLog:
    """The append-only record of every finished call: what makes the stage resumable. Opening it
    takes the log's lock (waiting for any other run) before reading, so what it reads is final;
    `close` releases it."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = _hold_lock(path.with_name(path.name + ".lock"), path)
        self.records: dict[str, dict] = {}
        self.cost_usd, self.tokens = 0.0, 0
        torn = []
        if path.exists():
            for record in iter_jsonl(path, on_error=lambda where, message: torn.append(where)):
                if not self.done(record["key"]):
                    self._add(record)
            if torn:  # a line cut short by a kill: drop it (its call is simply made again)
                write_jsonl_atomic(path, self.records.values())
        self._fh = path.open("a", encoding="utf-8")
        self.torn_lines = len(torn)

    def __enter__(self) -> "CallLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def done(self, key: str) -> bool:
        """A call is done once it has an answer; a failed call (timeout, 5xx after the client's
        retries, an empty or malformed body) is asked again by the next run."""
        return key in self.records and self.records[key]["error"] is None

    def _add(self, record: dict) -> None:
        self.records[record["key"]] = record
        self.cost_usd += record.get("cost_usd") or 0.0
        self.tokens += record.get("prompt_tokens", 0) + record.get("completion_tokens", 0)

    def append(self, record: dict) -> None:
        self._add(record)
        self._fh.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def spend(self) -> tuple[float, int]:
        """Dollars and tokens of every call this stage has made, in all runs."""
        return self.cost_usd, self.tokens

    def close(self) -> None:
        self._fh.close()
        self._lock.close()


def run_jobs(backend, jobs: list[Job], log: CallLog, config: dict, desc: str) -> None:
    """Make every call not yet in the log, appending each result as it returns."""
    # Identical requests share a key and one call (two new examples can earn the same judge prompt).
    pending = list({job.key: job for job in jobs if not log.done(job.key)}.values())
    budget_usd, budget_tokens = config["budget"].get("usd"), config["budget"].get("tokens")

    def over_budget() -> str | None:
        cost, tokens = log.spend()
        if budget_usd is not None and cost >= budget_usd:
            return f"${cost:.4f} spent of the ${budget_usd:g} budget"
        if budget_tokens is not None and tokens >= budget_tokens:
            return f"{tokens:,} tokens used of the {budget_tokens:,} budget"
        return None

    if pending and (reason := over_budget()):
        raise BudgetReached(reason)
    total = len({job.key for job in jobs})
    bar = tqdm(total=total, initial=total - len(pending), desc=desc, unit="call", dynamic_ncols=True)

    async def drive():
        async for job, result in backend.run(pending):
            log.append({"key": job.key, "kind": job.kind, "cluster_id": job.cluster_id, "backend": backend.name,
                        "text": result.text, "error": result.error, "prompt_tokens": result.prompt_tokens,
                        "completion_tokens": result.completion_tokens, "cost_usd": backend.cost(result)})
            cost, _ = log.spend()
            bar.set_postfix_str(f"${cost:.4f}", refresh=False)
            bar.update()
            if reason := over_budget():
                return reason  # leaving the loop cancels the calls not yet started
        return None

    try:
        reason = asyncio.run(drive())
    finally:
        bar.close()
    if reason and any(job.key not in log.records for job in jobs):
        raise BudgetReached(reason)
