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


def test_a_batch_scores_each_conversation_as_it_scores_alone(tiny_base):
    """Right padding is masked out of attention and of the loss: the modifier report batches, the
    compression report scores one conversation at a time, and both must give one figure."""
    import torch
    from transformers import AutoModelForCausalLM

    from glue.core.records import answer_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    model = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()
    scored = answer_tokens(SFT_DIR / "val.jsonl", tokenizer, limit=12, seed=0, max_len=256)
    assert len({len(ids) for ids, _ in scored}) > 1  # lengths differ, so the batches are padded
    alone, tokens = answer_loss(model, scored, "alone")
    batched, batched_tokens = answer_loss(model, scored, "batched", batch_size=5)
    assert tokens == batched_tokens == sum(len(ids) - start for ids, start in scored)
    assert abs(alone - batched) < 1e-5 * alone
    with torch.no_grad():  # and both are what transformers' own loss says
        ids, start = scored[0]
        own = model(input_ids=torch.tensor([ids]), labels=torch.tensor([[-100] * start + ids[start:]])).loss
    assert abs(answer_loss(model, scored[:1], "one")[0] - float(own)) < 1e-5
