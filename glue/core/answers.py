"""The one rule for "the same answer", used by the rule judges (1B), the 1B self-consistency
check and 1C's self-consistency vote, so that no two stages disagree on it.

- math: the final number (an explicit marker such as "The final answer is", "####" or
  \\boxed{} wins, else the last number); 1,234 = 1234 = 1234.0, since a judge grading the
  value would accept each.
- code: the longest fenced code block (else the whole answer), whitespace-normalised but not
  lower-cased: Python is case-sensitive (`True` is not `true`).
- automation: the JSON object, keys sorted (key order and spacing are not part of the answer);
  an answer that is not JSON falls through to the text rule.
- anything else: the whitespace-normalised, lower-cased text.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation

_FINAL = [re.compile(p, re.IGNORECASE) for p in (
    r"final answer is[:\s]*\$?\s*(-?[\d,]*\.?\d+)",
    r"####\s*\$?\s*(-?[\d,]*\.?\d+)",
    r"\\boxed\{\s*\$?(-?[\d,]*\.?\d+)",
)]
_NUMBER = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)


def final_number(text: str | None) -> Decimal | None:
    """The final numeric answer in `text`, or None when it has no number."""
    found = None
    for pattern in _FINAL:
        if matches := pattern.findall(text or ""):
            found = matches[-1]
            break
    if found is None:
        numbers = _NUMBER.findall(text or "")
        found = numbers[-1] if numbers else None
    if found is None:
        return None
    try:
        return Decimal(found.replace(",", "").rstrip("."))
    except InvalidOperation:
        return None


def extract_code(answer: str | None) -> str:
    blocks = _CODE_BLOCK.findall(answer or "")
    return max(blocks, key=len) if blocks else (answer or "")


def answer_key(domain: str, answer: str | None) -> str:
    """What must be equal for two answers in `domain` to count as the same answer."""
    if domain == "math" and (number := final_number(answer)) is not None:
        return f"number:{number.normalize():f}"
    if domain == "automation":
        try:
            return "json:" + json.dumps(json.loads(answer or ""), sort_keys=True)
        except ValueError:
            pass
    if domain == "code":
        return "code:" + " ".join(extract_code(answer).split())
    return "text:" + " ".join((answer or "").lower().split())


def same_answer(domain: str, a: str | None, b: str | None) -> bool:
    return answer_key(domain, a) == answer_key(domain, b)
