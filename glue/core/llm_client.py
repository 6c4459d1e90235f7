"""The one client for every teacher and judge call: the `openai` package pointed at any
OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server) by OPENAI_BASE_URL,
OPENAI_API_KEY and a model name.

- Concurrency is bounded (an asyncio semaphore) and configurable; calls are never one at a time.
- Retries are the openai client's own: exponential backoff with jitter on 408/409/429/5xx and
  connection errors, honouring Retry-After. `max_retries` and the per-call `timeout` are config.
- Every answer is counted (calls, tokens, cost from a per-1M-token price table, errors, cache hits).
- An optional on-disk cache keyed by (model, messages, parameters) makes a repeated call free.
- The API key comes only from the environment and is never logged, written or put in a repr.

Batch callers use `chat_many` (results in request order) or `iter_chat` (each result as soon
as it returns, for callers that append results to disk as they arrive).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

import openai

from glue.core.io import UserError, load_yaml
from glue.core.paths import EVAL_CONFIGS, overlay

ENDPOINTS = EVAL_CONFIGS / "endpoints.yml"


@dataclass
class ChatResult:
    """One call's outcome. `text` is None when the call failed; `error` then says why."""
    key: str
    text: str | None
    error: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Usage:
    calls: int = 0
    cache_hits: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0  # None when the model has no price in the table
    errors_by_kind: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {**self.__dict__, "cost_usd": None if self.cost_usd is None else round(self.cost_usd, 6)}


def request_key(model: str, messages: list[dict], params: dict) -> str:
    """The cache and resume key: a hash of exactly what decides the answer."""
    blob = json.dumps({"model": model, "messages": messages, "params": params},
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Successful answers on disk (SQLite: one row per key, safe against a crash mid-write)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, "
                         "request TEXT, text TEXT, prompt_tokens INT, completion_tokens INT, created REAL)")
        self._db.commit()

    def get(self, key: str) -> tuple[str, int, int] | None:
        with self._lock:
            row = self._db.execute("SELECT text, prompt_tokens, completion_tokens FROM responses "
                                   "WHERE key = ?", (key,)).fetchone()
        return row

    def put(self, key: str, model: str, request: dict, result: ChatResult) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (key, model, json.dumps(request, ensure_ascii=False), result.text,
                              result.prompt_tokens, result.completion_tokens, time.time()))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()


class EndpointError(UserError):
    """The endpoint cannot serve at all (unreachable, bad key, unknown model): stop the run."""


def load_endpoints(path: str | Path = ENDPOINTS) -> dict:
    config = load_yaml(path)
    if not isinstance(config, dict):
        raise UserError(f"{path}: expected a mapping with `roles:` and `prices_per_1m:`")
    return config


def endpoint_settings(role: str, path: str | Path = ENDPOINTS, profile: str | None = None) -> dict:
    """The settings of one role (teacher, judge, labeller) from eval_configs/endpoints.yml,
    with a profile's overrides applied (e.g. `profiles.tiny.judge.backend: rules`)."""
    config = load_endpoints(path)
    roles = config.get("roles") or {}
    if role not in roles:
        raise UserError(f"{path}: no role {role!r} under roles: (has: {', '.join(roles)})")
    settings = dict(roles[role])
    settings = overlay(settings, ((config.get("profiles") or {}).get(profile) or {}).get(role) or {})
    settings["prices_per_1m"] = config.get("prices_per_1m") or {}
    return settings


class LLMClient:
    def __init__(self, model: str, *, base_url: str | None = None, api_key: str | None = None,
                 concurrency: int = 8, timeout: float = 60.0, max_retries: int = 5,
                 prices_per_1m: dict | None = None, cache: ResponseCache | None = None):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if not api_key:
            raise UserError("OPENAI_API_KEY is not set: export it before running (a local server "
                            "without authentication accepts any value, e.g. OPENAI_API_KEY=local)")
        if concurrency < 1:
            raise UserError(f"concurrency must be >= 1, got {concurrency}")
        self.model = model
        self.base_url = base_url or "https://api.openai.com/v1"
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.cache = cache
        self.usage = Usage()
        price = (prices_per_1m or {}).get(model)
        self._price = (float(price["input"]), float(price["output"])) if price else None
        if self._price is None:
            self.usage.cost_usd = None
        # Kept private and out of __repr__: the key must never reach a log or a manifest.
        self.__api_key = api_key

    @classmethod
    def for_role(cls, role: str, profile: str | None = None, endpoints: str | Path = ENDPOINTS,
                 cache_dir: str | Path | None = None) -> "LLMClient":
        settings = endpoint_settings(role, endpoints, profile)
        model = os.environ.get(f"{role.upper()}_MODEL") or settings.get("model")
        if not model:
            raise UserError(f"{endpoints}: roles.{role}.model is not set (or set {role.upper()}_MODEL)")
        cache = ResponseCache(Path(cache_dir) / f"{role}.sqlite") if cache_dir else None
        return cls(model, concurrency=int(settings.get("concurrency", 8)),
                   timeout=float(settings.get("timeout_s", 60)),
                   max_retries=int(settings.get("max_retries", 5)),
                   prices_per_1m=settings["prices_per_1m"], cache=cache)

    def __repr__(self) -> str:
        return f"LLMClient(model={self.model!r}, base_url={self.base_url!r}, concurrency={self.concurrency})"

    def describe(self) -> dict:
        """What a manifest may record about this client (never the key)."""
        return {"model": self.model, "base_url": self.base_url, "concurrency": self.concurrency,
                "timeout_s": self.timeout, "max_retries": self.max_retries}

    def _count(self, result: ChatResult) -> None:
        usage = self.usage
        if result.cached:
            usage.cache_hits += 1
            return
        usage.calls += 1
        usage.prompt_tokens += result.prompt_tokens
        usage.completion_tokens += result.completion_tokens
        if result.error:
            usage.errors += 1
            kind = result.error.split(":", 1)[0]
            usage.errors_by_kind[kind] = usage.errors_by_kind.get(kind, 0) + 1
        if self._price is not None:
            usage.cost_usd += self.cost_of(result)

    def cost_of(self, result: ChatResult) -> float | None:
        """Dollars one call cost at the price table's rates (None: the model has no price)."""
        if self._price is None or result.cached:
            return None if self._price is None else 0.0
        return (result.prompt_tokens * self._price[0] + result.completion_tokens * self._price[1]) / 1e6

    def _new_async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(api_key=self.__api_key, base_url=self.base_url,
                                  timeout=self.timeout, max_retries=self.max_retries)

    async def _call(self, client: openai.AsyncOpenAI, semaphore: asyncio.Semaphore,
                    messages: list[dict], params: dict) -> ChatResult:
        key = request_key(self.model, messages, params)
        if self.cache is not None and (hit := self.cache.get(key)) is not None:
            result = ChatResult(key, hit[0], prompt_tokens=hit[1], completion_tokens=hit[2], cached=True)
            self._count(result)
            return result
        async with semaphore:
            started = time.monotonic()
            try:
                response = await client.chat.completions.create(model=self.model, messages=messages, **params)
                text = response.choices[0].message.content if response.choices else None
                usage = response.usage
                result = ChatResult(key, text, prompt_tokens=usage.prompt_tokens if usage else 0,
                                    completion_tokens=usage.completion_tokens if usage else 0)
                if not text:
                    result.text, result.error = None, "empty: the endpoint returned no content"
            except openai.APITimeoutError:
                result = ChatResult(key, None, f"timeout: no answer within {self.timeout:g} s "
                                               f"({self.max_retries} retries)")
            except openai.APIConnectionError as exc:
                raise EndpointError(f"cannot reach {self.base_url} for model {self.model} after "
                                    f"{self.max_retries} retries ({exc.__cause__ or exc}); is the "
                                    f"server running and OPENAI_BASE_URL right?") from None
            except openai.AuthenticationError:
                raise EndpointError(f"{self.base_url} rejected the API key (check OPENAI_API_KEY)") from None
            except openai.NotFoundError as exc:
                raise EndpointError(f"{self.base_url}: model {self.model!r} not found ({exc.message})") from None
            except openai.APIStatusError as exc:
                result = ChatResult(key, None, f"http {exc.status_code}: {exc.message} "
                                               f"(after {self.max_retries} retries)")
            except (openai.APIResponseValidationError, ValueError) as exc:
                # A 200 whose body is not a chat completion (malformed JSON): not retried.
                result = ChatResult(key, None, f"malformed: {type(exc).__name__}: {str(exc)[:200]}")
            result.seconds = time.monotonic() - started
        if result.ok and self.cache is not None:
            self.cache.put(key, self.model, {"messages": messages, "params": params}, result)
        self._count(result)
        return result

    async def iter_chat(self, requests: Iterable[list[dict]], params: dict | None = None
                        ) -> AsyncIterator[tuple[int, ChatResult]]:
        """Yield (request index, result) as each call finishes, at most `concurrency` in flight."""
        params = dict(params or {})
        semaphore = asyncio.Semaphore(self.concurrency)
        async with self._new_async_client() as client:
            tasks = [asyncio.ensure_future(self._indexed(i, client, semaphore, m, params))
                     for i, m in enumerate(requests)]
            try:
                for next_done in asyncio.as_completed(tasks):
                    yield await next_done
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _indexed(self, index, client, semaphore, messages, params):
        return index, await self._call(client, semaphore, messages, params)

    def chat_many(self, requests: list[list[dict]], params: dict | None = None,
                  on_result: Callable[[int, ChatResult], Any] | None = None) -> list[ChatResult]:
        """Run every request concurrently; return results in request order."""
        results: list[ChatResult | None] = [None] * len(requests)

        async def run():
            async for index, result in self.iter_chat(requests, params):
                results[index] = result
                if on_result is not None:
                    on_result(index, result)

        asyncio.run(run())
        return results  # type: ignore[return-value]

    def chat(self, messages: list[dict], **params) -> ChatResult:
        return self.chat_many([messages], params)[0]
