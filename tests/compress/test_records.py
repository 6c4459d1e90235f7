"""Answer tokens: the part of a rendered conversation that perplexity is scored on (glue.core.records
runs where the compression stages run)."""

from transformers import AutoTokenizer

from glue.core.records import answer_tokens
from conftest import SFT_DIR


def test_answer_tokens_start_at_the_assistants_answer(tiny_base):
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    scored = answer_tokens(SFT_DIR / "val.jsonl", tokenizer, limit=5, seed=0, max_len=256)
    assert len(scored) == 5
    for ids, start in scored:
        prompt = tokenizer.decode(ids[:start])
        assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        assert tokenizer.decode(ids[start:]).endswith("<|eot_id|>") and start < len(ids) <= 256
    # the same shuffle, fewer records: a prefix of the same list
    assert answer_tokens(SFT_DIR / "val.jsonl", tokenizer, limit=2, seed=0, max_len=256) == scored[:2]
