"""Run a benchmark suite (eval_configs/suites/<profile>_<gate>.yml) on a model folder with
lm-evaluation-harness, keep lm-eval's results JSON as is, and write summary.md/summary.json:
task, metric, score, the gate's threshold, pass/fail, and a comparison with a baseline.

A suite lists lm-eval task names (stock ones, or ours under eval_configs/tasks/) with their
num_fewshot, limit and gate. A gate is `metric` (lm-eval's "metric,filter" key) with `min`
(absolute floor) and/or `max_drop` (largest allowed fall below the baseline's score).

Tasks that execute model-written code (lm-eval's `unsafe_code`, e.g. HumanEval) run only with
--allow-code-exec AND HF_ALLOW_CODE_EVAL=1 in the environment; otherwise they are reported as
not run and the gate verdict is INCOMPLETE, never PASS.

Runs in either environment: the training one (lm-eval 0.4.11) evaluates dense checkpoints,
the compression one (lm-eval 0.4.13, compressed-tensors) also evaluates `make compress`'s
outputs (`make eval-compressed`). The two lm-eval releases index tasks differently; the
helpers below read both.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import time
from pathlib import Path

from glue.core.checkpoints import check_model_dir
from glue.core.io import UserError, atomic_path, load_yaml, run_cli, write_text_atomic
from glue.core.manifest import write_manifest
from glue.core.paths import ROOT

TASKS_DIR = ROOT / "eval_configs" / "tasks"
SUITES_DIR = ROOT / "eval_configs" / "suites"
SUITE_KEYS = {"gate", "description", "model", "apply_chat_template", "fewshot_as_multiturn", "tasks"}
TASK_KEYS = {"task", "num_fewshot", "limit", "gate"}
GATE_KEYS = {"metric", "min", "max_drop"}


def task_manager():
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(TASKS_DIR))


def load_suite(path: str | Path, manager=None) -> dict:
    """Read and check a suite file; every task must be one lm-eval knows."""
    path = Path(path)
    suite = load_yaml(path)
    if not isinstance(suite, dict) or not isinstance(suite.get("tasks"), list) or not suite["tasks"]:
        raise UserError(f"{path}: expected a mapping with a non-empty `tasks:` list")
    if unknown := set(suite) - SUITE_KEYS:
        raise UserError(f"{path}: unknown keys {sorted(unknown)} (allowed: {sorted(SUITE_KEYS)})")
    manager = manager or task_manager()
    for i, entry in enumerate(suite["tasks"]):
        where = f"{path}: tasks[{i}]"
        if not isinstance(entry, dict) or "task" not in entry:
            raise UserError(f"{where}: expected a mapping with `task:`")
        if unknown := set(entry) - TASK_KEYS:
            raise UserError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(TASK_KEYS)})")
        name = entry["task"]
        if name not in manager.task_index:
            close = difflib.get_close_matches(name, manager.all_tasks, n=3)
            hint = f"did you mean {', '.join(close)}?" if close else "see `lm-eval ls tasks`"
            raise UserError(f"{where}: unknown lm-eval task {name!r} ({hint})")
        gate = entry.get("gate") or {}
        if unknown := set(gate) - GATE_KEYS:
            raise UserError(f"{where}: unknown gate keys {sorted(unknown)} (allowed: {sorted(GATE_KEYS)})")
        if gate and "metric" not in gate:
            raise UserError(f"{where}: a gate needs `metric:` (lm-eval's 'metric,filter' key)")
    return suite


def index_entry(manager, name: str) -> tuple[str, str | None]:
    """(kind, YAML path) of a registered name; kind is "task", "python_task", "group" or "tag".
    lm-eval 0.4.11 indexes plain dicts ({"type", "yaml_path"}), 0.4.13 `Entry` objects."""
    entry = manager.task_index[name]
    if isinstance(entry, dict):
        return entry["type"], entry.get("yaml_path")
    kind = entry.kind.name.lower()
    return ("python_task" if kind == "py_task" else kind), entry.yaml_path


def task_config(manager, name: str) -> dict:
    """A task's YAML through lm-eval's own loader, without importing its `!function` code
    (the stock humaneval code downloads a metric from the hub on import)."""
    kind, yaml_path = index_entry(manager, name)
    if kind == "python_task":
        return {}
    try:  # lm-eval 0.4.13
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError:  # lm-eval 0.4.11
        from lm_eval.utils import load_yaml_config

        return load_yaml_config(yaml_path, mode="simple")
    return load_yaml(yaml_path, resolve_func=False, recursive=True)


def is_unsafe(manager, name: str) -> bool:
    registered = name in manager.task_index and index_entry(manager, name)[0] == "task"
    return bool(task_config(manager, name).get("unsafe_code")) if registered else False


def score_of(results: dict, task: str, metric: str) -> float | None:
    value = (results.get("results", {}).get(task) or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def run_suite(model_dir: Path, suite: dict, results_dir: Path, allow_code: bool) -> list[dict]:
    """Evaluate every task of the suite with one loaded model; return one row per task."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.models.huggingface import HFLM

    manager = task_manager()
    if model_dir.suffix == ".gguf":  # `make gguf`'s files: llama-cpp-python in the compression environment
        from glue.compress.gguf import lm_eval_model

        lm = lm_eval_model(model_dir)
    else:
        model_args = {"dtype": "auto", "batch_size": 1, **(suite.get("model") or {})}
        lm = HFLM(pretrained=str(model_dir.resolve()), **model_args)
    rows = []
    for entry in suite["tasks"]:
        name, gate = entry["task"], entry.get("gate") or {}
        row = {"task": name, "metric": gate.get("metric"), "num_fewshot": entry.get("num_fewshot"),
               "limit": entry.get("limit"), "score": None, "results_file": None, "status": "ok"}
        rows.append(row)
        if is_unsafe(manager, name) and not allow_code:
            row["status"] = "not run: executes model code (opt in with ALLOW_CODE_EVAL=1)"
            continue
        tracker = EvaluationTracker(output_path=str(results_dir / f"{name}.json"))
        # data_files in our task YAMLs are relative to the repository root
        with contextlib.chdir(ROOT):
            results = lm_eval.simple_evaluate(
                model=lm, tasks=[name], task_manager=manager, num_fewshot=entry.get("num_fewshot"),
                limit=entry.get("limit"), apply_chat_template=bool(suite.get("apply_chat_template", True)),
                fewshot_as_multiturn=bool(suite.get("fewshot_as_multiturn", True)),
                confirm_run_unsafe_code=allow_code, log_samples=True, evaluation_tracker=tracker)
        samples = results.pop("samples")
        tracker.save_results_aggregated(results=results, samples=samples)
        for task_name, task_samples in samples.items():
            tracker.save_results_samples(task_name=task_name, samples=task_samples)
        row["results_file"] = str(next(results_dir.glob(f"{name}_*.json")).relative_to(results_dir.parent))
        if row["metric"]:
            row["score"] = score_of(results, name, row["metric"])
            if row["score"] is None:
                available = sorted(k for k in results["results"].get(name, {}) if "," in k)
                raise UserError(f"task {name}: lm-eval reported no metric {row['metric']!r} "
                                f"(it reported: {', '.join(available)}); fix the suite's gate")
    return rows


def apply_gates(rows: list[dict], suite: dict, baseline: dict[str, float] | None) -> str:
    """Fill each row's threshold/verdict; return the suite verdict PASS, FAIL or INCOMPLETE."""
    gates = {e["task"]: e.get("gate") or {} for e in suite["tasks"]}
    verdicts = []
    for row in rows:
        gate = gates[row["task"]]
        base = (baseline or {}).get(row["task"])
        row["baseline"] = base
        row["delta"] = None if base is None or row["score"] is None else row["score"] - base
        checks = []
        if "min" in gate:
            checks.append((f">= {gate['min']}", None if row["score"] is None else row["score"] >= gate["min"]))
        if "max_drop" in gate and base is not None:
            floor = base - gate["max_drop"]
            checks.append((f">= baseline - {gate['max_drop']} ({floor:.4f})",
                           None if row["score"] is None else row["score"] >= floor))
        row["threshold"] = " and ".join(c[0] for c in checks) or "none"
        if row["status"] != "ok":
            row["verdict"] = "not run"
        elif not checks:
            row["verdict"] = "no gate"
        else:
            row["verdict"] = "pass" if all(c[1] for c in checks) else "fail"
        verdicts.append(row["verdict"])
    if "fail" in verdicts:
        return "FAIL"
    return "INCOMPLETE" if "not run" in verdicts else "PASS"


def fmt(value, signed=False) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def summary_markdown(name: str, model: str, suite_path: str, rows: list[dict], verdict: str,
                     baseline_label: str | None) -> str:
    lines = [f"# Evaluation: {name}", "", f"- model: `{model}`", f"- suite: `{suite_path}`"]
    if baseline_label:
        lines.append(f"- baseline: `{baseline_label}`")
    lines += [f"- gate verdict: **{verdict}**", ""]
    header = "| task | metric | score | baseline | delta | threshold | result |"
    lines += [header, "|" + "---|" * 7]
    for r in rows:
        result = r["verdict"] if r["status"] == "ok" else f"{r['verdict']} ({r['status']})"
        lines.append(f"| {r['task']} | {r['metric'] or '-'} | {fmt(r['score'])} | {fmt(r['baseline'])} "
                     f"| {fmt(r['delta'], signed=True)} | {r['threshold']} | {result} |")
    lines += ["", "Scores are lm-eval's, from the results files under `results/` (kept as lm-eval wrote them)."]
    return "\n".join(lines) + "\n"


def baseline_scores(baseline: Path, suite: dict, out: Path, allow_code: bool) -> tuple[dict, str]:
    """Scores of a baseline: a previous evaluation folder (its summary.json) is reused;
    a model folder is evaluated with the same suite into <out>/baseline/."""
    if (baseline / "summary.json").is_file():
        summary = json.loads((baseline / "summary.json").read_text(encoding="utf-8"))
        return {r["task"]: r["score"] for r in summary["rows"] if r["score"] is not None}, str(baseline)
    check_model_dir(baseline, gguf_ok=True)
    base_dir = out / "baseline"
    base_dir.mkdir(parents=True, exist_ok=True)
    rows = run_suite(baseline, suite, base_dir / "results", allow_code)
    write_text_atomic(base_dir / "summary.json", json.dumps({"model": str(baseline), "rows": rows}, indent=2) + "\n")
    return {r["task"]: r["score"] for r in rows if r["score"] is not None}, str(baseline)


def evaluate(model: Path, suite_path: Path, out: Path, baseline: Path | None = None,
             allow_code: bool = False, overwrite: bool = False) -> dict:
    started = time.time()
    check_model_dir(model, gguf_ok=True)
    suite = load_suite(suite_path)
    if allow_code and os.environ.get("HF_ALLOW_CODE_EVAL") != "1":
        raise UserError("--allow-code-exec also needs HF_ALLOW_CODE_EVAL=1 in the environment "
                        "(both say yes to running model-written code)")
    if baseline is not None and not baseline.exists():
        raise UserError(f"baseline not found: {baseline} (a model folder or a previous evaluation folder)")
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.mkdir()
        rows = run_suite(model, suite, tmp / "results", allow_code)
        base, base_label = baseline_scores(baseline, suite, tmp, allow_code) if baseline else (None, None)
        verdict = apply_gates(rows, suite, base)
        summary = {"name": out.name, "model": str(model), "suite": str(suite_path), "baseline": base_label,
                   "verdict": verdict, "rows": rows}
        write_text_atomic(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(tmp / "summary.md", summary_markdown(out.name, str(model), str(suite_path),
                                                               rows, verdict, base_label))
        inputs = {"model": model, "suite": suite_path, **({"baseline": baseline} if baseline else {})}
        write_manifest(tmp, "eval", inputs,
                       {"allow_code_exec": allow_code, "suite": suite},
                       {"verdict": verdict, **{f"{r['task']}/{r['metric']}": r["score"] for r in rows}}, started)
    return summary


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.eval.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True,
                        help="Hugging Face checkpoint folder to evaluate, or a GGUF file (compression environment)")
    parser.add_argument("--suite", type=Path, required=True, help="eval_configs/suites/<profile>_<gate>.yml")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. work/<profile>/eval/1a")
    parser.add_argument("--baseline", type=Path, help="model folder or previous evaluation folder to compare with")
    parser.add_argument("--allow-code-exec", action="store_true",
                        help="run tasks that execute model-written code (also needs HF_ALLOW_CODE_EVAL=1)")
    parser.add_argument("--strict", action="store_true", help="exit 1 unless the gate verdict is PASS")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)
    summary = evaluate(args.model, args.suite, args.out, args.baseline, args.allow_code_exec, args.overwrite)
    print((args.out / "summary.md").read_text(encoding="utf-8"))
    if args.strict and summary["verdict"] != "PASS":
        raise SystemExit(1)


if __name__ == "__main__":
    run_cli(main)
