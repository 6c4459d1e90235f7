"""Benchmark suites: configs validated through lm-eval's own loader, gates, bad input, and
the tiny suite run end to end on the tiny model."""

import json

import pytest
import yaml

from glue.core.checkpoints import check_model_dir
from glue.core import tiny_world
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
    # the generated world's tasks: 200 held-out prompts each, never of the training split
    for name in ("tiny_world_math", "tiny_world_reasoning", "tiny_world_code", "tiny_world_automation"):
        docs = list(tasks[name].eval_docs)
        assert len(docs) == 200 and all(tiny_world.split_of(d["prompt"]) == "eval" for d in docs)
        assert all(tiny_world.solve(d["prompt"]) == d["answer"] for d in docs)
        assert 0.3 < sum(d["cell"].endswith("/hard") for d in docs) / len(docs) < 0.9


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


# A suite whose gates pass or fail depending on the score: a floor, a floor plus an allowed
# drop below the baseline, a code task that may not run, and a task without a gate.
GATED_SUITE = """\
tasks:
  - {task: tiny_gsm8k_cot_llama, gate: {metric: "exact_match,strict-match", min: 0.5}}
  - {task: tiny_mmlu_llama, gate: {metric: "exact_match,strict_match", min: 0.25, max_drop: 0.05}}
  - {task: tiny_humaneval_instruct, gate: {metric: "pass_at_1,create_test", min: 0.1}}
  - {task: gsm8k_cot_llama}
"""


def gated_rows(gsm8k, mmlu, humaneval=0.2, humaneval_status="ok"):
    return [{"task": "tiny_gsm8k_cot_llama", "score": gsm8k, "status": "ok"},
            {"task": "tiny_mmlu_llama", "score": mmlu, "status": "ok"},
            {"task": "tiny_humaneval_instruct", "score": humaneval if humaneval_status == "ok" else None,
             "status": humaneval_status},
            {"task": "gsm8k_cot_llama", "score": 0.0, "status": "ok"}]


@pytest.mark.parametrize("scores, baseline, verdicts, verdict", [
    # every score on its floor, mmlu exactly max_drop below its baseline: all pass
    ((0.5, 0.30), {"tiny_mmlu_llama": 0.35}, ["pass", "pass", "pass", "no gate"], "PASS"),
    ((0.49, 0.30), {"tiny_mmlu_llama": 0.35}, ["fail", "pass", "pass", "no gate"], "FAIL"),   # under min
    ((0.5, 0.29), {"tiny_mmlu_llama": 0.35}, ["pass", "fail", "pass", "no gate"], "FAIL"),    # dropped too far
    ((0.5, 0.29), None, ["pass", "pass", "pass", "no gate"], "PASS"),  # no baseline: the floor alone
    ((0.5, 0.24), None, ["pass", "fail", "pass", "no gate"], "FAIL"),
    ((0.5, 0.30, 0.0), None, ["pass", "pass", "fail", "no gate"], "FAIL"),
    # a gate that could not be evaluated never passes; a failed one outranks it
    ((0.5, 0.30, None, "not run: code"), None, ["pass", "pass", "not run", "no gate"], "INCOMPLETE"),
    ((0.0, 0.30, None, "not run: code"), None, ["fail", "pass", "not run", "no gate"], "FAIL"),
])
def test_gates_pass_and_fail_on_known_scores(tmp_path, manager, scores, baseline, verdicts, verdict):
    path = tmp_path / "suite.yml"
    path.write_text(GATED_SUITE)
    suite = load_suite(path, manager)
    rows = gated_rows(*scores)
    assert apply_gates(rows, suite, baseline) == verdict
    assert [r["verdict"] for r in rows] == verdicts


def test_gate_rows_say_their_threshold_and_delta(tmp_path, manager):
    path = tmp_path / "suite.yml"
    path.write_text(GATED_SUITE)
    rows = gated_rows(0.5, 0.29)
    apply_gates(rows, load_suite(path, manager), {"tiny_mmlu_llama": 0.35, "tiny_gsm8k_cot_llama": 0.6})
    assert rows[0]["threshold"] == ">= 0.5" and rows[0]["delta"] == pytest.approx(-0.1)
    assert rows[1]["threshold"] == ">= 0.25 and >= baseline - 0.05 (0.3000)" and rows[1]["baseline"] == 0.35
    assert rows[1]["delta"] == pytest.approx(-0.06) and rows[3]["threshold"] == "none"


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
def test_tiny_suite_end_to_end_with_baseline(tiny_base, tmp_path, monkeypatch, manager):
    monkeypatch.setenv("HF_ALLOW_CODE_EVAL", "1")
    # The stock-shaped tasks of the tiny suite plus one world task, with the code task's opt-in.
    small = tmp_path / "small.yml"
    tiny = yaml.safe_load((SUITES_DIR / "tiny_1a.yml").read_text())
    tiny["tasks"] = [t for t in tiny["tasks"] if not t["task"].startswith("tiny_world")] + [
        {"task": "tiny_world_code", "num_fewshot": 0, "limit": 20, "gate": {"metric": "exact_match,none", "min": 0.0}}]
    small.write_text(yaml.safe_dump(tiny))
    first = evaluate(tiny_base, small, tmp_path / "eval" / "base", allow_code=True)
    out = tmp_path / "eval" / "base"
    # The floors are 0: PASS here says that every task ran and produced its gated metric.
    assert first["verdict"] == "PASS"
    assert [r["status"] for r in first["rows"]] == ["ok"] * 4
    assert all(isinstance(r["score"], float) for r in first["rows"])
    for row in first["rows"]:  # lm-eval's own results file, untouched
        results = json.loads((out / row["results_file"]).read_text())
        assert row["task"] in results["results"] and "config" in results
    assert (out / "summary.md").read_text().count("| pass |") == 4
    assert json.loads((out / "manifest.json").read_text())["stage"] == "eval"

    # The gates on the scores this run measured: a floor at a score passes, one just above fails.
    scores = {r["task"]: r["score"] for r in first["rows"]}
    suite = load_suite(small, manager)
    for entry in suite["tasks"]:
        entry["gate"]["min"] = scores[entry["task"]]
    rows = [dict(r) for r in first["rows"]]
    assert apply_gates(rows, suite, None) == "PASS" and [r["verdict"] for r in rows] == ["pass"] * 4
    suite["tasks"][1]["gate"]["min"] = scores["tiny_mmlu_llama"] + 0.01
    assert apply_gates(rows, suite, None) == "FAIL" and [r["verdict"] for r in rows] == ["pass", "fail", "pass", "pass"]

    # A gate the tiny model cannot meet (every mmlu answer right) fails the run, whatever else
    # passes; without the opt-in the code task is not run; a previous evaluation folder serves
    # as the baseline.
    monkeypatch.delenv("HF_ALLOW_CODE_EVAL")
    suite = tmp_path / "suite.yml"
    suite.write_text("model: {dtype: float32, device: cpu, batch_size: 2}\ntasks:\n"
                     "  - {task: tiny_gsm8k_cot_llama, num_fewshot: 0, limit: 2, "
                     "gate: {metric: 'exact_match,strict-match', min: 0.0, max_drop: 0.5}}\n"
                     "  - {task: tiny_mmlu_llama, num_fewshot: 0, limit: 4, "
                     "gate: {metric: 'exact_match,strict_match', min: 1.0}}\n"
                     "  - {task: tiny_humaneval_instruct, limit: 2, "
                     "gate: {metric: 'pass_at_1,create_test', min: 0.0}}\n")
    second = evaluate(tiny_base, suite, tmp_path / "eval" / "again", baseline=out)
    assert second["rows"][0]["baseline"] == first["rows"][0]["score"]
    assert second["rows"][1]["score"] < 1.0
    assert second["rows"][2]["status"].startswith("not run")
    assert [r["verdict"] for r in second["rows"]] == ["pass", "fail", "not run"]
    assert second["verdict"] == "FAIL"
    again = tmp_path / "eval" / "again"
    assert "gate verdict: **FAIL**" in (again / "summary.md").read_text()
    assert json.loads((again / "manifest.json").read_text())["figures"]["verdict"] == "FAIL"
    with pytest.raises(UserError, match="HF_ALLOW_CODE_EVAL=1"):
        evaluate(tiny_base, suite, tmp_path / "eval" / "x", allow_code=True)
    assert not (tmp_path / "eval" / "x").exists()
