"""glue.eval.evaluate in the compression environment (lm-eval 0.4.13, compressed-tensors) on a
compressed checkpoint, and compress_report picking its score up: what `make eval-compressed`
followed by `make compress-report` does."""

import json

import pytest
from conftest import SFT_DIR

from glue.compress.report import report
from glue.core.io import UserError
from glue.eval.evaluate import SUITES_DIR, evaluate, is_unsafe, load_suite, task_manager


def test_project_suites_resolve_under_this_lm_eval(tmp_path, monkeypatch):
    manager = task_manager()
    for suite, count in (("tiny_1a.yml", 7), ("real_1a.yml", 3)):
        names = [t["task"] for t in load_suite(SUITES_DIR / suite, manager)["tasks"]]
        assert len(names) == count
    # the generated world's tasks build their held-out docs under this lm-eval release too
    monkeypatch.chdir(SUITES_DIR.parents[1])
    world = manager.load_task_or_group(["tiny_world_math"])["tiny_world_math"]
    assert len(list(world.eval_docs)) == 200
    # the code tasks are recognised as such, so they stay behind ALLOW_CODE_EVAL=1
    assert is_unsafe(manager, "tiny_humaneval_instruct") and is_unsafe(manager, "humaneval_instruct")
    assert not is_unsafe(manager, "tiny_gsm8k_cot_llama") and not is_unsafe(manager, "mmlu_llama")
    bad = tmp_path / "suite.yml"
    bad.write_text("tasks:\n  - task: tiny_gsm8k_cot_lama\n")
    with pytest.raises(UserError, match="did you mean tiny_gsm8k_cot_llama"):
        load_suite(bad, manager)


@pytest.mark.slow
def test_compressed_checkpoint_is_evaluated_and_reported(compressed, tiny_base, tmp_path, monkeypatch, stock_suite):
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    suite, eval_dir = stock_suite, tmp_path / "eval"
    gptq = compressed["w4a16_gptq"][0]
    assert json.loads((gptq / "config.json").read_text())["quantization_config"]["quant_method"] == "compressed-tensors"
    # as the Makefile does it: the reference under its folder name, then the artefact
    ref = evaluate(tiny_base, suite, eval_dir / tiny_base.name)
    out = evaluate(gptq, suite, eval_dir / gptq.name, baseline=eval_dir / tiny_base.name)

    for summary in (ref, out):
        assert [r["task"] for r in summary["rows"]] == ["tiny_gsm8k_cot_llama", "tiny_mmlu_llama",
                                                        "tiny_humaneval_instruct"]
        assert [r["status"] for r in summary["rows"]][:2] == ["ok", "ok"]
        assert summary["rows"][2]["status"].startswith("not run") and summary["verdict"] == "INCOMPLETE"
        assert all(isinstance(r["score"], float) for r in summary["rows"][:2])
    assert [r["baseline"] for r in out["rows"][:2]] == [r["score"] for r in ref["rows"][:2]]

    # lm-eval's own files: the tasks ran on the suite's number of docs, and the answers are the
    # quantized model's (the 4-bit weights change what the tiny model generates)
    def answers(name, row):  # one sample line per doc and filter: keep the gate's filter
        (samples,) = (eval_dir / name / "results").glob(f"samples_{row['task']}_*.jsonl")
        lines = map(json.loads, samples.read_text().splitlines())
        return [s["resps"] for s in lines if s["filter"] == row["metric"].split(",")[1]]

    for row, docs in zip(out["rows"], (10, 8)):
        results = json.loads((eval_dir / gptq.name / row["results_file"]).read_text())
        assert results["n-samples"][row["task"]]["effective"] == docs == len(answers(gptq.name, row))
    assert any(answers(gptq.name, row) != answers(tiny_base.name, row) for row in out["rows"][:2])

    rows = report(tiny_base, [gptq], SFT_DIR / "val.jsonl", tmp_path / "report", samples=10,
                  max_seq_length=256, eval_dir=eval_dir)
    by_name = {r["artefact"]: r for r in rows}
    for name, summary in ((tiny_base.name, ref), (gptq.name, out)):
        scores = [r["score"] for r in summary["rows"] if r["score"] is not None]
        assert by_name[name]["eval_score"] == pytest.approx(sum(scores) / len(scores))
    line = next(li for li in (tmp_path / "report" / "report.md").read_text().splitlines()
                if li.startswith(f"| {gptq.name} |"))
    assert line.split("|")[6].strip() == f"{by_name[gptq.name]['eval_score']:.4f}"
