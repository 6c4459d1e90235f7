"""glue.compress.gguf on the tiny model: llama.cpp's converter, quantization through llama-cpp-python,
and the reload check against transformers (needs `make setup`: llama-cpp-python and the
converter in .venv-compress/src/llama.cpp)."""

import json
import subprocess
import sys

import pytest
from conftest import CONVERTER, ROOT, VAL

from glue.compress.gguf import KNOWN_PRE_TOKENIZERS, check_types, export, pre_tokenizer_name
from glue.compress.report import report
from glue.core.io import UserError


def test_export_writes_every_type_and_reloads_it(exported):
    out, figures = exported
    assert sorted(p.name for p in out.iterdir()) == [
        "check.json", "manifest.json", "model-Q4_K_M.gguf", "model-Q5_K_M.gguf", "model-f16.gguf"]
    assert json.loads((out / "check.json").read_text()) == figures
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "gguf" and manifest["parameters"]["types"] == ["Q5_K_M", "Q4_K_M"]
    for name, f in figures.items():
        assert (out / name).stat().st_size == f["bytes"]
        assert f["prompts"] == 3 and f["tokenizer_match"] == 1.0, name
    # The 16-bit file is the conversion check: same next-token choice as transformers everywhere.
    assert figures["model-f16.gguf"]["top1_agreement"] >= 0.95
    assert figures["model-f16.gguf"]["bits_per_param"] == pytest.approx(16, rel=0.1)
    assert figures["model-Q4_K_M.gguf"]["bytes"] < figures["model-Q5_K_M.gguf"]["bytes"] < figures["model-f16.gguf"]["bytes"]
    # Rows of 128 are not divisible by 256: K-quants fall back, and the file says which types it holds.
    assert set(figures["model-Q4_K_M.gguf"]["tensor_types"]) - {"F32", "F16", "Q4_K", "Q6_K"}


def test_tiny_tokenizer_maps_to_a_llama_cpp_pre_tokenizer(tiny_base):
    assert pre_tokenizer_name(tiny_base) in KNOWN_PRE_TOKENIZERS


def test_unknown_gguf_type_is_refused_with_the_known_ones():
    with pytest.raises(UserError, match=r"unknown GGUF type\(s\) Q5_K_X.*Q5_K_M"):
        check_types(["Q5_K_X"])


def test_compressed_checkpoint_is_refused_and_nothing_is_written(compressed, tmp_path):
    folder, _ = compressed["w4a16_gptq"]
    with pytest.raises(UserError, match="quantization_config.*make dequantize"):
        export(folder, tmp_path / "gguf", ["Q4_K_M"], VAL, CONVERTER)
    assert list(tmp_path.iterdir()) == []


def test_bad_type_fails_before_converting(tiny_base, tmp_path):
    result = subprocess.run([sys.executable, "-m", "glue.compress.gguf", "--model", str(tiny_base), "--out", str(tmp_path / "g"),
                             "--data", str(VAL), "--converter", str(CONVERTER), "--types", "Q5_K_M,Q9"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "unknown GGUF type(s) Q9" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_without_overwrite(exported, tiny_base):
    out, _ = exported
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match="already exists"):
        export(tiny_base, out, ["Q4_K_M"], VAL, CONVERTER)
    assert sorted(p.name for p in out.iterdir()) == before


def test_compress_report_scores_gguf_files_on_the_same_tokens(exported, tiny_base, tmp_path):
    out, figures = exported
    rows = report(tiny_base, [out / "model-f16.gguf", out / "model-Q4_K_M.gguf"], VAL, tmp_path / "report",
                  samples=8, max_seq_length=256)
    by_name = {r["artefact"]: r for r in rows}
    assert by_name["model-f16.gguf"]["tokens"] == by_name["base_model"]["tokens"]
    # f16 rounding only: llama.cpp's perplexity of the f16 file is the transformers one.
    assert by_name["model-f16.gguf"]["ppl_recovery_pct"] == pytest.approx(100, abs=0.5)
    assert by_name["model-Q4_K_M.gguf"]["weights_bytes"] == figures["model-Q4_K_M.gguf"]["bytes"]
    assert by_name["model-Q4_K_M.gguf"]["eval_score"] is None
    assert "| model-Q4_K_M.gguf |" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow
def test_gguf_file_runs_the_eval_suite_like_its_checkpoint(exported, tiny_base, tmp_path, monkeypatch, stock_suite):
    """`make eval-compressed` on a GGUF file: the same lm-eval suite, through llama-cpp-python.
    The prompts lm-eval builds with the file's own chat template must be the checkpoint's,
    byte for byte (prefilled assistant turns included), and the f16 file must answer like it."""
    from glue.eval.evaluate import evaluate

    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    out, _ = exported
    suite, eval_dir = stock_suite, tmp_path / "eval"
    ref = evaluate(tiny_base, suite, eval_dir / tiny_base.name)
    f16 = evaluate(out / "model-f16.gguf", suite, eval_dir / "model-f16.gguf", baseline=eval_dir / tiny_base.name)
    assert [r["status"] for r in f16["rows"]][:2] == ["ok", "ok"] and f16["verdict"] == "INCOMPLETE"
    assert all(isinstance(r["score"], float) for r in f16["rows"][:2])

    def samples(name, task):
        (path,) = (eval_dir / name / "results").glob(f"samples_{task}_*.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines()]

    for task, docs in (("tiny_gsm8k_cot_llama", 10), ("tiny_mmlu_llama", 8)):
        mine, theirs = samples("model-f16.gguf", task), samples(tiny_base.name, task)
        assert len({s["doc_id"] for s in mine}) == docs
        assert [s["arguments"] for s in mine] == [s["arguments"] for s in theirs], task
    # Short answers (at most 10 tokens): f16 rounding rarely changes a greedy choice that soon.
    same = [a["resps"] == b["resps"] for a, b in zip(samples("model-f16.gguf", "tiny_mmlu_llama"),
                                                    samples(tiny_base.name, "tiny_mmlu_llama"))]
    assert sum(same) >= 6, same

    rows = report(tiny_base, [out / "model-f16.gguf"], VAL, tmp_path / "report", samples=8,
                  max_seq_length=256, eval_dir=eval_dir)
    assert rows[1]["eval_score"] is not None and rows[0]["eval_score"] is not None


# Why `lm_eval_model` gives llama.cpp one spare KV-cache slot. llama-cpp-python 0.3.36's
# `create_completion` skips its max_tokens check while the text so far ends inside a UTF-8
# character (its `multibyte_fix` branch `continue`s before the check), so a completion that
# reaches max_tokens on the lead byte of a 3-byte character generates its two continuation
# bytes too, and decodes one token more than max_tokens allows. With the prompt cut to the
# trained context less max_gen_toks, that token needs a KV cell past the trained context:
# without a spare cell llama.cpp answers "decode: failed to find a memory slot for batch of
# size 1" (the 9th gsm8k request of `make demo` on the 1C model). The tiny model
# would stop at EOS long before, so a logits processor steers its greedy choice: no EOS and
# ASCII only, except at the end of the 9th request, which spells "あ" (E3 81 82) from its
# last allowed token on.
MAX_GEN = 64
STEERED = 8  # the 9th request
TAIL = "あ".encode()


def steered_requests(monkeypatch, spare: bool):
    """Steer the model `lm_eval_model` builds next (see above), with the module's spare slot or
    without it. Returns (one (prompt tokens, completion tokens, tokens in the KV cache) per
    request, {"n_ctx": the context llama.cpp allocated})."""
    import llama_cpp
    import numpy as np

    import glue.compress.gguf as gguf

    seen, built = [], {}
    original = gguf.load_gguf

    def load_gguf(path, n_ctx, threads, logits_all=True):
        llm = original(path, n_ctx if spare else n_ctx - 1, threads, logits_all)
        built["n_ctx"] = llm.n_ctx()
        vocab = [llm.detokenize([t], special=True) for t in range(llm.n_vocab())]
        byte_token = {b: vocab.index(bytes([b])) for b in TAIL}
        plain = np.array([bool(text) and max(text) < 0x80 and not llama_cpp.llama_vocab_is_eog(llm._model.vocab, t)
                          for t, text in enumerate(vocab)])
        create_completion = llm.create_completion

        def steered_completion(prompt, **kwargs):
            index, prompt_len, max_tokens = len(seen), len(prompt), kwargs["max_tokens"]

            def steer(input_ids, logits):
                step = len(input_ids) - prompt_len  # tokens generated so far
                if index == STEERED and max_tokens - 1 <= step < max_tokens - 1 + len(TAIL):
                    forced = np.full_like(logits, -np.inf)
                    forced[byte_token[TAIL[step - (max_tokens - 1)]]] = 0.0
                    return forced
                return np.where(plain, logits, -np.inf)

            out = create_completion(prompt, **kwargs, logits_processor=llama_cpp.LogitsProcessorList([steer]))
            seen.append((prompt_len, out["usage"]["completion_tokens"], llm.n_tokens))
            return out

        llm.create_completion = steered_completion
        return llm

    monkeypatch.setattr(gguf, "load_gguf", load_gguf)
    return seen, built


def full_context_requests(count=12):
    """Few-shot style prompts longer than the trained context (1024 tokens), sharing their shots."""
    from types import SimpleNamespace

    shots = " ".join(f"Question {i}: how many apples are left?" for i in range(400))
    return [SimpleNamespace(args=(f"{shots} Final question {i}:", {"until": [], "max_gen_toks": MAX_GEN}))
            for i in range(count)]


def test_gguf_model_generates_to_the_end_of_a_full_context(exported, tiny_base, monkeypatch):
    """Twelve full-context requests in a row, the 9th ending on a 3-byte character: the spare
    slot holds the token llama-cpp-python decodes past max_gen_toks, and every request answers."""
    from glue.compress.gguf import lm_eval_model

    out, _ = exported
    seen, built = steered_requests(monkeypatch, spare=True)
    lm = lm_eval_model(out / "model-f16.gguf")
    trained = json.loads((tiny_base / "config.json").read_text())["max_position_embeddings"]  # 1024
    answers = lm.generate_until(full_context_requests(), disable_tqdm=True)
    assert len(answers) == 12
    # Every prompt is cut to the trained context less max_gen_toks and runs to max_gen_toks.
    assert [p for p, _, _ in seen] == [trained - MAX_GEN] * 12
    ascii_runs = [c for i, (_, c, _) in enumerate(seen) if i != STEERED]
    assert ascii_runs == [MAX_GEN] * 11 and all(a.isascii() and a for i, a in enumerate(answers) if i != STEERED)
    # The 9th ran past max_gen_toks by the character's two continuation bytes and ended on it,
    # with one token more in the KV cache than the trained context holds.
    assert seen[STEERED][1] == MAX_GEN + 2 and answers[STEERED].endswith("あ")
    assert seen[STEERED][2] == trained + 1 <= built["n_ctx"]


def test_without_the_spare_slot_the_ninth_full_context_request_fails(exported, tiny_base, monkeypatch, capfd):
    """The same requests with llama.cpp's context exactly the trained one: the first eight
    answer, the 9th fails as it did in `make demo`. If this starts passing (llama-cpp-python
    stops decoding past max_tokens), the spare slot in lm_eval_model can go."""
    from glue.compress.gguf import lm_eval_model

    out, _ = exported
    seen, built = steered_requests(monkeypatch, spare=False)
    lm = lm_eval_model(out / "model-f16.gguf")
    assert built["n_ctx"] == json.loads((tiny_base / "config.json").read_text())["max_position_embeddings"]
    capfd.readouterr()
    with pytest.raises(RuntimeError, match="llama_decode returned 1"):
        lm.generate_until(full_context_requests(), disable_tqdm=True)
    assert "failed to find a memory slot for batch of size 1" in capfd.readouterr().err
    assert [c for _, c, _ in seen] == [MAX_GEN] * STEERED  # the first eight answered in full
