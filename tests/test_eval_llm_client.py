"""The shared teacher/judge client against a real local HTTP server, through the real openai client."""

import socket
import time

import pytest

from glue.core.io import UserError
from glue.core.llm_client import EndpointError, LLMClient, ResponseCache, endpoint_settings

USER = [{"role": "user", "content": "What is 6 times 7?"}]
PRICES = {"judge-m": {"input": 1.0, "output": 2.0}}


def client_for(stub, **kw) -> LLMClient:
    kw.setdefault("max_retries", 3)
    return LLMClient("judge-m", base_url=stub.base_url, api_key="sk-secret-xyz",
                     prices_per_1m=PRICES, **kw)


def test_answers_usage_and_cost(openai_stub):
    openai_stub.responder = lambda model, messages, body: "forty two"
    client = client_for(openai_stub)
    results = client.chat_many([USER, USER + [{"role": "user", "content": "again"}]], {"temperature": 0})
    assert [r.text for r in results] == ["forty two", "forty two"]
    assert client.usage.calls == 2 and client.usage.completion_tokens == 4
    expected = (client.usage.prompt_tokens * 1.0 + 4 * 2.0) / 1e6
    assert client.usage.cost_usd == pytest.approx(expected)
    assert openai_stub.requests[0]["body"]["temperature"] == 0


def test_retry_after_429_and_500_then_success(openai_stub):
    openai_stub.retry_after = 0.3
    openai_stub.script("429", "500")
    client = client_for(openai_stub)
    started = time.monotonic()
    result = client.chat(USER)
    assert result.ok and result.text.startswith("stub answer")
    assert [r["fault"] for r in openai_stub.requests] == ["429", "500", None]
    assert time.monotonic() - started >= 0.3  # the Retry-After wait was honoured


def test_retries_are_bounded_and_failures_counted(openai_stub):
    openai_stub.script(*["500"] * 3)
    client = client_for(openai_stub, max_retries=2)
    result = client.chat(USER)
    assert not result.ok and result.error.startswith("http 500")
    assert openai_stub.calls() == 3 and client.usage.errors == 1


@pytest.mark.parametrize("fault,kind", [("malformed", "malformed"), ("empty", "empty")])
def test_bad_bodies_are_errors_not_answers(openai_stub, fault, kind):
    openai_stub.script(fault)
    client = client_for(openai_stub)
    result = client.chat(USER)
    assert result.text is None and result.error.startswith(kind)
    assert client.usage.errors_by_kind == {kind: 1}


def test_timeout_is_a_counted_error(openai_stub):
    openai_stub.hang_seconds = 2.0
    openai_stub.script("hang")
    client = client_for(openai_stub, timeout=0.3, max_retries=0)
    result = client.chat(USER)
    assert result.error.startswith("timeout")


def test_concurrency_is_bounded_and_used(openai_stub):
    openai_stub.latency = 0.2
    client = client_for(openai_stub, concurrency=4)
    started = time.monotonic()
    results = client.chat_many([[{"role": "user", "content": f"q{i}"}] for i in range(16)])
    elapsed = time.monotonic() - started
    assert all(r.ok for r in results)
    assert openai_stub.max_in_flight == 4
    assert elapsed < 16 * 0.2 / 2  # far from one at a time (3.2 s)


def test_results_keep_request_order(openai_stub):
    openai_stub.responder = lambda model, messages, body: messages[-1]["content"].upper()
    client = client_for(openai_stub, concurrency=8)
    prompts = [f"p{i}" for i in range(20)]
    results = client.chat_many([[{"role": "user", "content": p}] for p in prompts])
    assert [r.text for r in results] == [p.upper() for p in prompts]


def test_cache_makes_second_run_free(openai_stub, tmp_path):
    cache = ResponseCache(tmp_path / "teacher.sqlite")
    first = client_for(openai_stub, cache=cache).chat_many([USER], {"temperature": 0})
    second_client = client_for(openai_stub, cache=ResponseCache(tmp_path / "teacher.sqlite"))
    second = second_client.chat_many([USER], {"temperature": 0})
    assert second[0].text == first[0].text and second[0].cached
    assert openai_stub.calls() == 1 and second_client.usage.cache_hits == 1
    # different parameters are a different key
    second_client.chat_many([USER], {"temperature": 0.7})
    assert openai_stub.calls() == 2


def test_unreachable_endpoint_is_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = LLMClient("m", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=1)
    with pytest.raises(EndpointError, match="cannot reach http://127.0.0.1"):
        client.chat(USER)


def test_missing_key_fails_before_any_call(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(UserError, match="OPENAI_API_KEY is not set"):
        LLMClient("m", base_url="http://127.0.0.1:9/v1")


def test_key_never_in_repr_or_description(openai_stub):
    client = client_for(openai_stub)
    assert "sk-secret-xyz" not in repr(client) + str(client.describe()) + str(vars(client).get("base_url"))
    client.chat(USER)
    assert openai_stub.requests[0]["authorization"] == "Bearer sk-secret-xyz"


def test_endpoint_settings_from_config():
    judge = endpoint_settings("judge")
    assert judge["model"] and judge["concurrency"] >= 1 and judge["timeout_s"] > 0
    assert endpoint_settings("judge", profile="tiny")["backend"] == "rules"
    with pytest.raises(UserError, match="no role"):
        endpoint_settings("oracle")
