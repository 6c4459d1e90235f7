"""Phase 1C data: teacher examples, judge filter, self-critique, reverse pairs, the mix;
resumable exactly-once generation, faults, the budget cap, and the offline backends."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from glue.core import tiny_world
from glue.core.io import UserError, iter_jsonl
from glue.distill import build as distill
from glue.distill.jobs import BudgetReached, CallLog

ROOT = Path(__file__).resolve().parent.parent
CURATED = ROOT / "tests/fixtures/sft/train.jsonl"


@pytest.fixture
def clusters_dir(tmp_path):
    """A failure-clusters/v1 folder, as `make failures-1b` writes it, from the bundled val set:
    one cluster of math failures, one of everything else."""
    members, ids = [], {0: [], 1: []}
    for record in iter_jsonl(ROOT / "tests/fixtures/sft/val.jsonl"):
        cluster = 0 if record["domain"] == "math" else 1
        members.append({"id": record["id"], "domain": record["domain"], "prompt": record["messages"][-2]["content"],
                        "reference": record["messages"][-1]["content"], "student_answer": "I am not sure.",
                        "verdict": "loss", "reason": "the answer does not address the request", "cluster_id": cluster})
        ids[cluster].append(record["id"])
    clusters = [{"cluster_id": c, "is_noise": False, "size": len(ids[c]),
                 "label": {"name": n, "description": d, "domain": dom, "source": "rules"},
                 "domains": {}, "representative_ids": ids[c][:2], "member_ids": ids[c]}
                for c, n, d, dom in ((0, "arithmetic slips", "wrong final numbers", "math"),
                                     (1, "vague answers", "answers that dodge the request", "conversation"))]
    folder = tmp_path / "clusters"
    folder.mkdir()
    (folder / "clusters.json").write_text(json.dumps({"format": "failure-clusters/v1", "clusters": clusters}))
    (folder / "members.jsonl").write_text("".join(json.dumps(m) + "\n" for m in members))
    return folder


def teacher_and_judge(model, messages, body):
    """A deterministic teacher (gpt-4o) and judge (gpt-4o-mini) for the stub server."""
    prompt = messages[-1]["content"]
    if model == "gpt-4o-mini":  # judge: a low score for examples about haiku, else a high one
        return json.dumps({"score": 4 if "haiku" in prompt.lower() else 9, "reason": "stub judgement"})
    if "training example number" in prompt:
        number = prompt.split("training example number ")[1].split(":")[0]
        return json.dumps({"instruction": f"New request {number} on {prompt[90:140]}", "response": "A fine new answer."})
    if '"critique"' in prompt:
        return json.dumps({"critique": "The draft dodges the question.", "revised": "A corrected answer."})
    return "Teacher answer: " + prompt.rsplit("[Request]", 1)[-1].strip()[:80]


def run(tmp_path, out="out", **kwargs):
    return distill.distill(kwargs.pop("profile", "real"), kwargs.pop("clusters"), CURATED, tmp_path / out, **kwargs)


@pytest.fixture
def world_clusters_dir(tmp_path):
    """The tiny profile's case: cluster 0 holds failed carries of the generated world, cluster 1
    the bundled val set's prompts, which no solver knows (the teacher falls back on references)."""
    members, ids = [], {0: [], 1: []}
    for task in tiny_world.generate(10, seed=5, families=["add"], hard_share=1.0):
        members.append({"id": f"w{len(members)}", "domain": "math", "prompt": task.prompt, "reference": task.answer,
                        "student_answer": "The final answer is 1.", "verdict": "loss", "reason": "wrong", "cluster_id": 0})
        ids[0].append(members[-1]["id"])
    for record in iter_jsonl(ROOT / "tests/fixtures/sft/val.jsonl"):
        members.append({"id": record["id"], "domain": record["domain"], "prompt": record["messages"][-2]["content"],
                        "reference": record["messages"][-1]["content"], "student_answer": "I am not sure.",
                        "verdict": "loss", "reason": "vague", "cluster_id": 1})
        ids[1].append(record["id"])
    clusters = [{"cluster_id": c, "is_noise": False, "size": len(ids[c]),
                 "label": {"name": n, "description": n, "domain": dom, "source": "rules"},
                 "domains": {}, "representative_ids": ids[c][:3], "member_ids": ids[c]}
                for c, n, dom in ((0, "carries", "math"), (1, "vague answers", "conversation"))]
    folder = tmp_path / "clusters"
    folder.mkdir()
    (folder / "clusters.json").write_text(json.dumps({"format": "failure-clusters/v1", "clusters": clusters}))
    (folder / "members.jsonl").write_text("".join(json.dumps(m) + "\n" for m in members))
    return folder


def test_offline_tiny_run_solves_the_world_and_writes_new_tasks_of_the_failing_cell(tmp_path, world_clusters_dir):
    figures = run(tmp_path, profile="tiny", clusters=world_clusters_dir)
    rows = list(iter_jsonl(tmp_path / "out/train.jsonl")) + list(iter_jsonl(tmp_path / "out/val.jsonl"))
    new = [r for r in rows if r.get("meta", {}).get("kind") == "new"]
    # every failure answered (10 by the solver, 30 from references); cluster 0's new examples
    # are fresh additions from the training split, each with the solver's answer (a few drawn
    # twice are one row after dedup); cluster 1's are skipped: nothing can solve them.
    wanted = distill.load_config(distill.CONFIG, "tiny")["new_per_cluster"]
    assert figures["kept_by_kind"]["answer"] == 40 and figures["kept_by_kind"]["new"] == wanted
    assert 0.9 * wanted <= len(new) <= wanted
    prompts = [r["messages"][0]["content"] for r in new]
    assert len(set(prompts)) == len(prompts)
    for row, prompt in zip(new, prompts):
        assert tiny_world.parse(prompt).family == "add" and tiny_world.split_of(prompt) == "train"
        assert row["messages"][1]["content"] == tiny_world.solve(prompt) and row["meta"]["cluster_id"] == 0
    # half of them the cluster's own cell (carries), half its sibling, which 1C must not unlearn
    carries = sum(tiny_world.parse(p).hard for p in prompts)
    assert abs(carries - len(prompts) / 2) <= 0.1 * len(prompts)
    solved = [r for r in rows if str(r.get("meta", {}).get("failure_id")).startswith("w")]
    assert len(solved) == 10 and all(tiny_world.check(r["messages"][0]["content"], r["messages"][1]["content"])
                                     for r in solved)
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["parameters"]["teacher"] == "solver" and manifest["figures"]["spend_usd"] == 0
    assert manifest["inputs"]["config"]["path"] == "templates/distill.yml"  # relative: valid in any clone
    assert str(ROOT) not in (tmp_path / "out/manifest.json").read_text()


def test_estimate_only_calls_nothing(tmp_path, clusters_dir, openai_stub):
    estimate = run(tmp_path, clusters=clusters_dir, estimate_only=True)["estimate"]
    assert openai_stub.calls() == 0 and not (tmp_path / "out").exists()
    teacher, judge = estimate["teacher"], estimate["judge"]
    # 30 failures x (answer + critique) + 2 clusters x 20 new examples
    assert teacher["model"] == "gpt-4o" and teacher["calls"] == 100 and judge["calls"] == 100
    assert teacher["output_tokens_max"] == 100 * 1024
    expected = (teacher["input_tokens"] * 2.5 + teacher["output_tokens_max"] * 10.0) / 1e6
    assert teacher["cost_usd_max"] == pytest.approx(expected, rel=1e-3)


def test_teacher_judge_filter_self_critique_and_rejects(tmp_path, clusters_dir, openai_stub):
    openai_stub.responder = teacher_and_judge
    figures = run(tmp_path, clusters=clusters_dir)
    assert openai_stub.calls("gpt-4o") == 100 and openai_stub.calls("gpt-4o-mini") == 100
    rejected = list(iter_jsonl(tmp_path / "out/rejected.jsonl"))
    assert rejected and all(r["stage"] == "judge" and r["score"] == 4 for r in rejected)
    assert figures["kept_examples"] == 2 * (100 - len(rejected))
    critique = next(r for r in iter_jsonl(tmp_path / "out/train.jsonl") if r["meta"]["kind"] == "critique")
    assert "Here is a draft answer:\nI am not sure." in critique["messages"][0]["content"]
    assert critique["messages"][1]["content"].endswith("Corrected answer:\nA corrected answer.")
    assert figures["spend_usd"] > 0 and figures["tokens"] > 0


def test_second_run_makes_no_calls_and_writes_the_same_bytes(tmp_path, clusters_dir, openai_stub):
    openai_stub.responder = teacher_and_judge
    run(tmp_path, clusters=clusters_dir)
    first = (tmp_path / "out/train.jsonl").read_bytes()
    calls = openai_stub.calls()
    run(tmp_path, clusters=clusters_dir)
    assert openai_stub.calls() == calls and (tmp_path / "out/train.jsonl").read_bytes() == first


def test_faults_are_retried_or_rejected_and_counted(tmp_path, clusters_dir, openai_stub):
    openai_stub.responder = teacher_and_judge
    openai_stub.script(*["429"] * 20, "500", "500")  # a 429 storm, then server errors: retried
    openai_stub.script("empty", "malformed")        # not retried: rejected and counted
    figures = run(tmp_path, clusters=clusters_dir)
    reasons = figures["rejected_by_reason"]
    assert reasons.get("empty") == 1 and reasons.get("malformed") == 1
    assert sum(1 for r in openai_stub.requests if r["fault"] == "429") == 20


def test_identical_requests_of_two_clusters_are_sent_once(tmp_path, clusters_dir, openai_stub):
    clusters = json.loads((clusters_dir / "clusters.json").read_text())
    for cluster in clusters["clusters"]:
        cluster["label"]["domain"] = "conversation"
    (clusters_dir / "clusters.json").write_text(json.dumps(clusters))

    def one_new_example(model, messages, body):  # both clusters' new examples earn one judge prompt
        if "training example number" in messages[-1]["content"]:
            return json.dumps({"instruction": "Name a colour.", "response": "Blue."})
        return teacher_and_judge(model, messages, body)
    openai_stub.responder = one_new_example
    figures = run(tmp_path, clusters=clusters_dir)
    judged = Counter(json.dumps(r["body"], sort_keys=True) for r in openai_stub.requests if r["model"] == "gpt-4o-mini")
    assert set(judged.values()) == {1}
    assert figures["kept_by_kind"]["new"] == 2 * 40  # each cluster's 20 examples, forward and reverse


def test_unparseable_judge_score_is_rejected_not_kept(tmp_path, clusters_dir, openai_stub):
    def judge_babbles(model, messages, body):
        return "I would say it is quite good" if model == "gpt-4o-mini" else teacher_and_judge(model, messages, body)
    openai_stub.responder = judge_babbles
    figures = run(tmp_path, clusters=clusters_dir)
    assert figures["kept_examples"] == 0 and figures["rejected_by_reason"] == {"unparsed judge output": 100}


def test_budget_cap_stops_cleanly_and_a_higher_budget_continues(tmp_path, clusters_dir, openai_stub):
    openai_stub.responder = teacher_and_judge
    with pytest.raises(BudgetReached):
        run(tmp_path, clusters=clusters_dir, budget_usd=0.0005)
    with CallLog(tmp_path / "out/calls.jsonl") as log:
        cost, _ = log.spend()
        per_call = max(r["cost_usd"] for r in log.records.values())
    concurrency = 16  # eval_configs/endpoints.yml: teacher concurrency
    assert 0.0005 <= cost <= 0.0005 + concurrency * per_call
    assert not (tmp_path / "out/train.jsonl").exists()
    run(tmp_path, clusters=clusters_dir, budget_usd=10.0)
    assert (tmp_path / "out/train.jsonl").exists()


def test_missing_api_key_is_a_clear_error_before_any_call(tmp_path, clusters_dir, openai_stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(UserError, match="OPENAI_API_KEY is not set"):
        run(tmp_path, clusters=clusters_dir)
    assert openai_stub.calls() == 0


def test_missing_clusters_say_which_stage_writes_them(tmp_path):
    with pytest.raises(UserError, match=r"clusters\.json not found: run `make failures-1b` first"):
        run(tmp_path, clusters=tmp_path / "nowhere")


def test_self_consistency_keeps_answers_the_samples_agree_on(tmp_path, clusters_dir, openai_stub):
    def wobbly(model, messages, body):  # math agrees on the number; other domains vary per sample
        prompt = messages[-1]["content"]
        return "Working...\nAnswer: 7" if "?" in prompt and body["temperature"] == 0 else f"take {body['seed']}"
    openai_stub.responder = wobbly
    figures = run(tmp_path, clusters=clusters_dir, mode="self-consistency")
    assert figures["agreement_by_domain"]["creative"] < 0.6
    kept = [r for r in iter_jsonl(tmp_path / "out/train.jsonl") if r["source"].startswith("distill")]
    assert kept and all(r["meta"]["kind"] == "consistency" for r in kept)


class AnswerGate:
    """A stub responder that counts the answers the server gives, per request body, and once
    closed holds every later answer back: a kill then lands with calls in flight whose answers
    can never reach the client (the rerun asks those again, and rightly)."""

    def __init__(self, responder):
        self.responder = responder
        self.answered: Counter = Counter()
        self._lock = threading.Lock()
        self._closed = False
        self._opened = threading.Event()

    def __call__(self, model, messages, body):
        with self._lock:
            held = self._closed
            if not held:
                self.answered[hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()] += 1
        if held:
            self._opened.wait(timeout=30)
        return self.responder(model, messages, body)

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def open(self) -> None:
        with self._lock:
            self._closed = False
        self._opened.set()


def wait_until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def successful_records(log: Path) -> Counter:
    return Counter(r["key"] for r in iter_jsonl(log, on_error=lambda *_: None) if r["error"] is None) \
        if log.exists() else Counter()


@pytest.mark.slow
@pytest.mark.parametrize("killed", ["stage", "parent"])
def test_kill_and_rerun_asks_no_answered_call_twice(tmp_path, clusters_dir, openai_stub, killed):
    """SIGKILL mid-generation, then a rerun, against a server with latency and faults, counted on
    the server: every request it answered was answered once, across both runs. `stage`: the stage
    is killed, and the calls in flight die with it. `parent`: the process that started the stage
    is killed (as `make` is by a CI timeout); the stage lives on while the rerun starts."""
    openai_stub.latency = 0.25
    openai_stub.fault_rate = {"429": 0.05, "500": 0.05}  # retried by the client
    gate = openai_stub.responder = AnswerGate(teacher_and_judge)
    run(tmp_path, out="uninterrupted", clusters=clusters_dir)
    uninterrupted = Counter(gate.answered)
    assert set(uninterrupted.values()) == {1}
    gate.answered.clear()

    openai_stub.script("malformed", "empty")  # calls that fail: the rerun asks them again
    out, log = tmp_path / "killed", tmp_path / "killed/calls.jsonl"
    cmd = [sys.executable, "-m", "glue.distill.build", "--profile", "real", "--clusters", str(clusters_dir),
           "--curated", str(CURATED), "--out", str(out)]
    if killed == "parent":  # a shell that waits for the stage, as make's recipe shell does
        proc = subprocess.Popen(["sh", "-c", '"$@" >/dev/null 2>&1 & echo $!; wait', "sh", *cmd], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True)
        with proc.stdout:
            stage = int(proc.stdout.readline())
    else:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stage = proc.pid
    try:
        wait_until(lambda: sum(gate.answered.values()) >= 40)
        if killed == "stage":  # kill with calls in flight, after every answer given has been logged
            gate.close()
            wait_until(lambda: sum(successful_records(log).values()) == sum(gate.answered.values()))
        assert sum(gate.answered.values()) < len(uninterrupted), "the kill must land mid-generation"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        if killed == "stage":
            time.sleep(openai_stub.latency + 0.5)  # the dead run's last requests reach the gate, and are held
            gate.open()
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, result.stderr[-2000:]
        wait_until(lambda: not running(stage))
    finally:
        if running(stage):
            os.kill(stage, signal.SIGKILL)

    asked_twice = sum(n - 1 for n in gate.answered.values())
    assert asked_twice == 0 and set(gate.answered) == set(uninterrupted), f"{asked_twice} answered calls asked again"
    records = successful_records(log)
    assert set(records.values()) == {1} and set(records) == set(successful_records(tmp_path / "uninterrupted/calls.jsonl"))
    for name in ("train.jsonl", "val.jsonl", "rejected.jsonl"):
        assert (out / name).read_bytes() == (tmp_path / "uninterrupted" / name).read_bytes()


def test_teacher_answer_in_the_wrong_format_is_rejected_and_counted(tmp_path, clusters_dir, openai_stub):
    def sloppy(model, messages, body):
        prompt = messages[-1]["content"]
        if model == "gpt-4o" and ("training example number" in prompt or '"critique"' in prompt):
            return "Sure! Here is a great example for you."  # not the JSON object asked for
        return teacher_and_judge(model, messages, body)
    openai_stub.responder = sloppy
    figures = run(tmp_path, clusters=clusters_dir)
    assert figures["rejected_by_reason"]["format"] == 40 + 30  # every new example and critique
    assert set(figures["kept_by_kind"]) == {"answer"}
    rejected = [r for r in iter_jsonl(tmp_path / "out/rejected.jsonl") if r["stage"] == "teacher"]
    assert all(r["text"] == "Sure! Here is a great example for you." for r in rejected)


def test_teacher_timeout_is_rejected_counted_and_retried_on_rerun(tmp_path, clusters_dir, openai_stub, monkeypatch):
    from glue.core import llm_client

    original = llm_client.endpoint_settings

    def quick(role, path=llm_client.ENDPOINTS, profile=None):
        return {**original(role, path, profile), "timeout_s": 0.5, "max_retries": 0}

    monkeypatch.setattr(llm_client, "endpoint_settings", quick)
    monkeypatch.setattr(distill, "endpoint_settings", quick)
    openai_stub.responder = teacher_and_judge
    openai_stub.hang_seconds = 2.0
    openai_stub.script("hang")
    figures = run(tmp_path, clusters=clusters_dir)
    assert figures["rejected_by_reason"].get("timeout") == 1
    calls = openai_stub.calls()
    figures = run(tmp_path, clusters=clusters_dir)  # the rerun asks again for the failed call only
    assert openai_stub.calls() == calls + 2  # the teacher call, then the judge call for its answer
    assert "timeout" not in figures["rejected_by_reason"]
