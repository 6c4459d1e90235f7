"""One "same answer" everywhere: the same pair of answers gets one verdict from glue.core.answers,
from 1B's self-consistency check, from 1C's self-consistency vote, and (math) from both rule
judges, 1B's and 1C's."""

from types import SimpleNamespace

import pytest

from glue.core.answers import answer_key, final_number, same_answer
from glue.distill.backends import RulesJudge
from glue.distill.build import build_from_consistency
from glue.distill.jobs import Job
from glue.eval.failures import agreement
from glue.eval.judge import judge_math

# (domain, first answer, second answer, same?)
CASES = [
    ("math", "The final answer is 1,234", "#### 1234", True),
    ("math", "so x = 12.0", "The answer is 12", True),
    ("math", "\\boxed{-3}", "It comes to -3.00 in the end.", True),
    ("math", "First 5, then 6", "6", True),
    ("math", "$40", "The final answer is: $40.", True),
    ("math", "7", "8", False),
    ("math", "0.5", "5", False),
    ("code", "```python\ndef f():\n    return 1\n```", "Here it is:\n```python\ndef f():\n  return  1\n```\nDone.", True),
    ("code", "```python\nreturn True\n```", "```python\nreturn true\n```", False),
    ("code", "x = 1", "x  =  1", True),
    ("conversation", "Paris", "  paris ", True),
    ("conversation", "Paris is the capital.", "Lyon is the capital.", False),
]


def one_c_keeps(domain: str, a: str, b: str) -> bool:
    """1C's self-consistency vote over two samples that must all agree."""
    jobs = [Job("consistency", 0, domain, [{"role": "user", "content": "q"}], {"seed": i},
                {"failure_id": "f1", "prompt": "q", "sample": i}, key=f"k{i}") for i in range(2)]
    log = SimpleNamespace(records={"k0": {"text": a}, "k1": {"text": b}})
    config = {"self_consistency": {"samples": 2, "min_agreement": 1.0}, "reverse_pairs": False}
    kept, _, _ = build_from_consistency(jobs, log, config, "teacher")
    return bool(kept)


@pytest.mark.parametrize("domain,a,b,same", CASES)
def test_one_verdict_for_the_same_pair(domain, a, b, same):
    assert same_answer(domain, a, b) is same
    assert (agreement(domain, [[a, b]])["all_agree_rate"] == 1.0) is same, "1B's consistency check disagrees"
    assert one_c_keeps(domain, a, b) is same, "1C's self-consistency vote disagrees"
    if domain == "math":
        assert (judge_math(b, reference=a).verdict == "tie") is same, "1B's rule judge disagrees"
        job = Job("score", 0, domain, [], {}, {"response": b, "reference": a})
        assert (RulesJudge("unused").score(job)[0] == 10) is same, "1C's rules judge disagrees"


def test_keys_say_which_rule_decided():
    assert answer_key("math", "#### 1,200.50") == "number:1200.5"
    assert answer_key("math", "no number here") == "text:no number here"
    assert answer_key("code", "```py\nprint(1)\n```") == "code:print(1)"
    assert final_number("nothing") is None
