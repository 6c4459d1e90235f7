"""Benchmark suites: configs validated through lm-eval's own loader, gates, bad input, and
the tiny suite run end to end on the tiny model."""

import json

import pytest

from glue.core.checkpoints import check_model_dir
from glue.core.io import UserError
from glue.core.paths import ROOT
from glue.eval.evaluate import SUITES_DIR, apply_gates, evaluate, load_suite, task_config, task_manager


@pytest.fixture(scope="module")
def manager():
    return task_manager()


def test_real_suite_tasks_resolve_and_parse(manager):
    suite = load_suite(SUITES_DIR / "real_1a.yml", manager)
    names = [t["task"] for t in suite["tasks"]]
    assert names == ["gsm8k_cot_llama", "mmlu_llama", "humaneval_instruct"]
    assert suite["apply_chat_template"] is True
    # the data is on the hub: check each config as lm-eval parses it, and that each gate's
    # filter is one the task defines
    gsm = task_config(manager, "gsm8k_cot_llama")
    assert gsm["num_fewshot"] == 8 and "strict-match" in [f["name"] for f in gsm["filter_list"]]
    assert task_config(manager, "humaneval_instruct")["unsafe_code"] is True
    assert "create_test" in [f["name"] for f in task_config(manager, "humaneval_instruct")["filter_list"]]
    mmlu_group = manager._get_config("mmlu_llama")
    assert mmlu_group["aggregate_metric_list"][0]["filter_list"] == ["strict_match"]
    subject = task_config(manager, "mmlu_llama_anatomy")
    assert subject["num_fewshot"] == 5 and subject["filter_list"][0]["name"] == "strict_match"


def test_tiny_tasks_load_through_lm_eval(manager, monkeypatch):
    """The tiny tasks build for real (local data, stock prompts via `include`)."""
    suite = load_suite(SUITES_DIR / "tiny_1a.yml", manager)
    monkeypatch.chdir(ROOT)  # data_files are relative to the repository root
    tasks = manager.load_task_or_group([t["task"] for t in suite["tasks"]])
    gsm = tasks["tiny_gsm8k_cot_llama"]
    assert len(gsm.eval_docs) == 10 and "The final answer is" in gsm.doc_to_text(gsm.eval_docs[0])
    assert len(tasks["tiny_mmlu_llama"].eval_docs) == 8
    assert len(tasks["tiny_humaneval_instruct"].eval_docs) == 164
    assert tasks["tiny_humaneval_instruct"].UNSAFE_CODE


def test_unknown_task_and_bad_keys(tmp_path, manager):
    bad = tmp_path / "suite.yml"
    bad.write_text("tasks:\n  - task: gsm8k_cot_lama\n")
    with pytest.raises(UserError, match=r"unknown lm-eval task 'gsm8k_cot_lama' \(did you mean gsm8k_cot_llama"):
        load_suite(bad, manager)
    bad.write_text("tasks:\n  - task: gsm8k_cot_llama\n    gate: {metrc: x}\n")
    with pytest.raises(UserError, match="unknown gate keys"):
        load_suite(bad, manager)


def test_not_a_model_folder(tmp_path):
    with pytest.raises(UserError, match="model folder not found"):
        check_model_dir(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="no config.json"):
        check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="no \\*.safetensors"):
        check_model_dir(tmp_path)


def test_gates():
    suite = {"tasks": [{"task": "a", "gate": {"metric": "m", "min": 0.5, "max_drop": 0.02}},
                       {"task": "b", "gate": {"metric": "m", "min": 0.1}},
                       {"task": "c", "gate": {"metric": "m", "min": 0.1}}]}
    rows = [{"task": "a", "score": 0.60, "status": "ok"}, {"task": "b", "score": 0.2, "status": "ok"},
            {"task": "c", "score": None, "status": "not run: code"}]
    assert apply_gates(rows, suite, {"a": 0.61}) == "INCOMPLETE"
    assert [r["verdict"] for r in rows] == ["pass", "pass", "not run"]
    assert rows[0]["delta"] == pytest.approx(-0.01)
    assert apply_gates(rows, suite, {"a": 0.65}) == "FAIL"  # 0.60 < 0.65 - 0.02
    assert rows[0]["verdict"] == "fail"


def test_humaneval_metric_runs_the_package_tests(monkeypatch):
    import importlib.util

    spec = importlib.util.spec_from_file_location("hu", ROOT / "eval_configs/tasks/tiny/humaneval_utils.py")
    hu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hu)
    problem = hu._problems()["HumanEval/0"]
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL", raising=False)
    with pytest.raises(RuntimeError, match="HF_ALLOW_CODE_EVAL=1"):
        hu.pass_at_1(["HumanEval/0"], [[problem["canonical_solution"]]])
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    assert hu.pass_at_1(["HumanEval/0"], [[problem["canonical_solution"]]]) == 1.0
    assert hu.pass_at_1(["HumanEval/0"], [["    return True\n"]]) == 0.0


@pytest.mark.slow
def test_tiny_suite_end_to_end_with_baseline(tiny_base, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    first = evaluate(tiny_base, SUITES_DIR / "tiny_1a.yml", tmp_path / "eval" / "base", allow_code=True)
    out = tmp_path / "eval" / "base"
    assert first["verdict"] == "PASS"
    assert [r["status"] for r in first["rows"]] == ["ok"] * 3
    assert all(isinstance(r["score"], float) for r in first["rows"])
    for row in first["rows"]:  # lm-eval's own results file, untouched
        results = json.loads((out / row["results_file"]).read_text())
        assert row["task"] in results["results"] and "config" in results
    assert (out / "summary.md").read_text().count("| pass |") == 3
    assert json.loads((out / "manifest.json").read_text())["stage"] == "eval"

    # without the opt-in the code task is not run and the gate cannot pass; a previous
    # evaluation folder serves as the baseline
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL")
    suite = tmp_path / "suite.yml"
    suite.write_text("model: {dtype: float32, device: cpu, batch_size: 2}\ntasks:\n"
                     "  - {task: tiny_gsm8k_cot_llama, num_fewshot: 0, limit: 2, "
                     "gate: {metric: 'exact_match,strict-match', min: 0.0, max_drop: 0.5}}\n"
                     "  - {task: tiny_humaneval_instruct, limit: 2, gate: {metric: 'pass_at_1,create_test', min: 0.0}}\n")
    second = evaluate(tiny_base, suite, tmp_path / "eval" / "again", baseline=out)
    assert second["verdict"] == "INCOMPLETE"
    assert second["rows"][0]["baseline"] == first["rows"][0]["score"]
    assert second["rows"][1]["status"].startswith("not run") and second["rows"][1]["verdict"] == "not run"
    with pytest.raises(UserError, match="HF_ALLOW_CODE_EVAL=1"):
        evaluate(tiny_base, suite, tmp_path / "eval" / "x", allow_code=True)
    assert not (tmp_path / "eval" / "x").exists()
