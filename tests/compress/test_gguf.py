"""glue.compress.gguf on the tiny model: llama.cpp's converter, quantization through llama-cpp-python,
and the reload check against transformers (needs `make setup`: llama-cpp-python and the
converter in .venv-compress/src/llama.cpp)."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT, SFT_DIR

from glue.compress.gguf import KNOWN_PRE_TOKENIZERS, check_types, export, pre_tokenizer_name
from glue.compress.report import report
from glue.core.io import UserError

CONVERTER = ROOT / ".venv-compress" / "src" / "llama.cpp"
VAL = SFT_DIR / "val.jsonl"


@pytest.fixture(scope="module")
def exported(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf") / "gguf"
    return out, export(tiny_base, out, ["Q5_K_M", "Q4_K_M"], VAL, CONVERTER, prompts=3, max_new_tokens=16)


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
def test_gguf_file_runs_the_eval_suite_like_its_checkpoint(exported, tiny_base, tmp_path, monkeypatch):
    """`make eval-compressed` on a GGUF file: the same lm-eval suite, through llama-cpp-python.
    The prompts lm-eval builds with the file's own chat template must be the checkpoint's,
    byte for byte (prefilled assistant turns included), and the f16 file must answer like it."""
    from glue.eval.evaluate import SUITES_DIR, evaluate

    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    out, _ = exported
    suite, eval_dir = SUITES_DIR / "tiny_1a.yml", tmp_path / "eval"
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


def test_gguf_model_generates_to_the_end_of_a_full_context(exported):
    """Prompts longer than the trained context are cut to it less max_gen_toks, one after
    another, as in a few-shot task. (The 9th full-context request of the tiny gsm8k task on the
    1C model ran out of KV-cache slots without the spare slot; `make demo` runs that case, this
    random model stops at EOS too early to reproduce it.)"""
    from types import SimpleNamespace

    from glue.compress.gguf import lm_eval_model

    out, _ = exported
    lm = lm_eval_model(out / "model-f16.gguf")
    shots = " ".join(f"Question {i}: how many apples are left?" for i in range(400))
    requests = [SimpleNamespace(args=(f"{shots} Final question {i}:", {"until": [], "max_gen_toks": 64}))
                for i in range(12)]
    answers = lm.generate_until(requests, disable_tqdm=True)
    assert len(answers) == 12 and all(isinstance(a, str) for a in answers)
