"""Phase 1C: targeted distillation data from the 1B failure clusters (`make distill-1c`).

For each failure cluster the teacher answers the failed prompts (knowing the failure
pattern), writes new examples of the pattern, and critiques and rewrites the student's failed
answer (self-critique). A judge scores every teacher example 1-10 and only those above the
threshold are kept (the rest go to rejected.jsonl with the score). Kept examples become forward
pairs (instruction -> response) and, unless switched off, reverse pairs (response -> the
instruction); a share of the curated 1A data is mixed in, near-duplicates are removed with the
curation stage's dedup, and the mix is split into train.jsonl / val.jsonl for the 1C config.
`--mode self-consistency` instead samples the teacher k times per failed prompt (greedy for
math/code, sampled otherwise) and keeps the answer the samples agree on.

Every call is logged the moment it returns, so a rerun after a crash, Ctrl-C or a kill
resumes without asking a finished call again (glue/distill/jobs.py); the teacher and judge run
online or offline (glue/distill/backends.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from glue.core.answers import answer_key
from glue.core.io import UserError, iter_jsonl, load_yaml, run_cli, write_jsonl_atomic
from glue.core.llm_client import endpoint_settings
from glue.core.manifest import write_manifest
from glue.core.paths import ROOT, profile_config
from glue.core.prompts import parse_json_object, render_prompt
from glue.data.dedup import DedupParams, deduplicate
from glue.distill.backends import make_backend
from glue.distill.jobs import BudgetReached, CallLog, Job, run_jobs

CONFIG = ROOT / "templates" / "distill.yml"
CLUSTERS_FORMAT = "failure-clusters/v1"
EXIT_BUDGET = 3


# ---- configuration and inputs ------------------------------------------------------------

def load_config(path: str | Path, profile: str) -> dict:
    config = load_yaml(path)
    if not isinstance(config, dict) or "mode" not in config:
        raise UserError(f"{path}: expected a mapping with mode:, answers_per_cluster:, ... (see templates/distill.yml)")
    return profile_config(config, profile)


def load_clusters(folder: str | Path) -> tuple[list[dict], dict[str, dict]]:
    """clusters.json (format failure-clusters/v1) and members.jsonl from `make failures-1b`."""
    folder = Path(folder)
    path = folder / "clusters.json"
    if not path.is_file():
        raise UserError(f"{path} not found: run `make failures-1b` first (it writes the failure clusters)")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != CLUSTERS_FORMAT:
        raise UserError(f"{path}: format is {data.get('format')!r}, expected {CLUSTERS_FORMAT!r}")
    members = {str(m["id"]): m for m in iter_jsonl(folder / "members.jsonl")}
    return data["clusters"], members


# ---- building the jobs ------------------------------------------------------------------

def _user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def _pattern(cluster: dict) -> tuple[str, str]:
    label = cluster.get("label") or {}
    return label.get("name") or f"cluster {cluster['cluster_id']}", label.get("description") or ""


def ordered_members(cluster: dict, members: dict[str, dict]) -> list[dict]:
    """Representatives (nearest the centroid) first, then the other members in id order."""
    ids = list(dict.fromkeys([*map(str, cluster.get("representative_ids", [])),
                              *sorted(map(str, cluster.get("member_ids", [])))]))
    return [members[i] for i in ids if i in members]


def teacher_jobs(clusters: list[dict], members: dict[str, dict], config: dict, params: dict) -> list[Job]:
    jobs = []
    for cluster in sorted(clusters, key=lambda c: c["cluster_id"]):
        if cluster.get("is_noise") and not config["include_noise"]:
            continue
        name, description = _pattern(cluster)
        chosen = ordered_members(cluster, members)[: config["answers_per_cluster"]]
        domain = (cluster.get("label") or {}).get("domain") or (chosen[0]["domain"] if chosen else "conversation")
        for failure in chosen:
            meta = {"failure_id": str(failure["id"]), "prompt": failure["prompt"], "reference": failure.get("reference"),
                    "student_answer": failure.get("student_answer", ""), "reason": failure.get("reason", "")}
            jobs.append(Job("answer", cluster["cluster_id"], failure["domain"], _user(render_prompt(
                "teacher_answer.j2", prompt=failure["prompt"], domain=failure["domain"],
                pattern_name=name, pattern_description=description)), params, meta))
            if config["self_critique"]:
                jobs.append(Job("critique", cluster["cluster_id"], failure["domain"], _user(render_prompt(
                    "self_critique.j2", prompt=failure["prompt"], domain=failure["domain"],
                    answer=failure.get("student_answer", ""), reference=failure.get("reference") or "")),
                    params, meta))
        examples = [m["prompt"] for m in chosen[:5]]
        for index in range(1, config["new_per_cluster"] + 1):
            jobs.append(Job("new", cluster["cluster_id"], domain, _user(render_prompt(
                "teacher_new_example.j2", domain=domain, pattern_name=name, pattern_description=description,
                examples=examples, index=index)), params, {"prompt": None, "reference": None, "examples": examples,
                                                           "index": index}))
    return jobs


def consistency_jobs(clusters: list[dict], members: dict[str, dict], config: dict, params: dict) -> list[Job]:
    settings = config["self_consistency"]
    jobs = []
    for cluster in sorted(clusters, key=lambda c: c["cluster_id"]):
        for failure in ordered_members(cluster, members)[: config["answers_per_cluster"]]:
            temperature = settings["temperature"].get(failure["domain"], settings["temperature"]["default"])
            meta = {"failure_id": str(failure["id"]), "prompt": failure["prompt"], "reference": failure.get("reference")}
            for sample in range(settings["samples"]):
                jobs.append(Job("consistency", cluster["cluster_id"], failure["domain"], _user(failure["prompt"]),
                                {**params, "temperature": temperature, "seed": sample}, {**meta, "sample": sample}))
    return jobs


def teacher_example(job: Job, text: str) -> tuple[dict | None, str]:
    """The (instruction, response) a teacher answer yields, or None and why it was rejected."""
    if job.kind in ("answer", "consistency"):
        return {"instruction": job.meta["prompt"], "response": text.strip()}, ""
    parsed = parse_json_object(text)
    if job.kind == "new":
        if not parsed or not str(parsed.get("instruction", "")).strip() or not str(parsed.get("response", "")).strip():
            return None, "format: expected a JSON object with non-empty instruction and response"
        return {"instruction": str(parsed["instruction"]).strip(), "response": str(parsed["response"]).strip()}, ""
    if not parsed or not str(parsed.get("critique", "")).strip() or not str(parsed.get("revised", "")).strip():
        return None, "format: expected a JSON object with non-empty critique and revised"
    return {"instruction": render_prompt("self_critique_example.j2", prompt=job.meta["prompt"],
                                         answer=job.meta["student_answer"]),
            "response": f"{parsed['critique'].strip()}\n\nCorrected answer:\n{parsed['revised'].strip()}",
            "reference_for_judge": parsed["revised"].strip()}, ""


def score_job(teacher: Job, example: dict, params: dict) -> Job:
    meta = {"teacher_key": teacher.key, "response": example.get("reference_for_judge", example["response"]),
            "reference": teacher.meta.get("reference"), "instruction": teacher.meta.get("prompt") or example["instruction"]}
    return Job("score", teacher.cluster_id, teacher.domain, _user(render_prompt(
        "judge_score.j2", domain=teacher.domain, instruction=example["instruction"], response=example["response"])),
        params, meta)


def parse_score(text: str | None) -> tuple[int | None, str]:
    parsed = parse_json_object(text)
    try:
        score = int(parsed["score"]) if parsed else None
    except (TypeError, ValueError):
        score = None
    if score is None or not 1 <= score <= 10:
        return None, f"unparsed judge output: {(text or '')[:200]!r}"
    return score, str(parsed.get("reason", ""))


# ---- from results to training records ----------------------------------------------------

def _record(example: dict, job: Job, direction: str, source: str, score: int | None) -> dict:
    if direction == "forward":
        messages = [{"role": "user", "content": example["instruction"]},
                    {"role": "assistant", "content": example["response"]}]
    else:
        messages = [{"role": "user", "content": render_prompt("reverse_instruction.j2", response=example["response"])},
                    {"role": "assistant", "content": example["instruction"]}]
    return {"id": f"distill-{job.key[:16]}-{direction[:3]}", "source": source, "domain": job.domain,
            "messages": messages, "meta": {"cluster_id": job.cluster_id, "kind": job.kind, "direction": direction,
                                           "judge_score": score, "failure_id": job.meta.get("failure_id")}}


def collect_teacher(jobs: list[Job], log: CallLog) -> tuple[list[tuple[Job, dict]], list[dict]]:
    """Teacher examples that parsed (to be scored), and the rejects with their reason."""
    examples, rejected = [], []
    for job in jobs:
        record = log.records.get(job.key)
        if record is None:
            continue
        example, why = (None, record["error"]) if record["error"] else teacher_example(job, record["text"])
        if example is None:
            rejected.append({"key": job.key, "kind": job.kind, "cluster_id": job.cluster_id, "stage": "teacher",
                             "reason": why, "text": record["text"]})
            continue
        examples.append((job, example))
    return examples, rejected


def build_from_teacher(examples: list[tuple[Job, dict]], score_jobs: dict[str, Job], log: CallLog,
                       config: dict, teacher_name: str) -> tuple[list[dict], list[dict]]:
    kept, rejected = [], []
    for job, example in examples:
        scored = log.records.get(score_jobs[job.key].key)
        if scored is None:
            continue
        score, reason = (None, scored["error"]) if scored["error"] else parse_score(scored["text"])
        entry = {"key": job.key, "kind": job.kind, "cluster_id": job.cluster_id, "stage": "judge",
                 "score": score, "reason": reason, "instruction": example["instruction"],
                 "response": example["response"]}
        if score is None or score <= config["judge_threshold"]:
            rejected.append(entry)
            continue
        source = "distill:self_critique" if job.kind == "critique" else f"distill:{teacher_name}"
        kept.append(_record(example, job, "forward", source, score))
        if config["reverse_pairs"]:
            kept.append(_record(example, job, "reverse", source, score))
    return kept, rejected


def build_from_consistency(jobs: list[Job], log: CallLog, config: dict, teacher_name: str
                           ) -> tuple[list[dict], list[dict], dict]:
    by_prompt: dict[str, list[tuple[Job, str]]] = defaultdict(list)
    for job in jobs:
        record = log.records.get(job.key)
        if record and record["text"]:
            by_prompt[job.meta["failure_id"]].append((job, record["text"]))
    kept, rejected, agreement = [], [], defaultdict(list)
    for failure_id in sorted(by_prompt):
        samples = by_prompt[failure_id]
        counts = Counter(answer_key(job.domain, text) for job, text in samples)
        top, votes = counts.most_common(1)[0]
        share = votes / config["self_consistency"]["samples"]
        agreement[samples[0][0].domain].append(share)
        job, text = next((j, t) for j, t in samples if answer_key(j.domain, t) == top)
        if share < config["self_consistency"]["min_agreement"]:
            rejected.append({"key": job.key, "kind": job.kind, "cluster_id": job.cluster_id, "stage": "agreement",
                             "reason": f"{votes} of {len(samples)} samples agree", "failure_id": failure_id})
            continue
        example = {"instruction": job.meta["prompt"], "response": text.strip()}
        kept.append(_record(example, job, "forward", f"distill:consistency:{teacher_name}", None))
        if config["reverse_pairs"]:
            kept.append(_record(example, job, "reverse", f"distill:consistency:{teacher_name}", None))
    rates = {domain: round(sum(v) / len(v), 4) for domain, v in sorted(agreement.items())}
    return kept, rejected, rates


def mix(new: list[dict], curated_path: Path, config: dict) -> tuple[list[dict], list[dict], dict]:
    """New examples plus `original_share` of curated rows, near-duplicates removed, split."""
    curated = sorted(iter_jsonl(curated_path), key=lambda r: str(r["id"]))
    share = config["original_share"]
    wanted = round(len(new) * share / (1 - share)) if share < 1 else len(curated)
    original = random.Random(config["seed"]).sample(curated, min(wanted, len(curated)))
    rows = sorted(new, key=lambda r: r["id"]) + sorted(original, key=lambda r: str(r["id"]))
    texts = ["\n".join(m["content"] for m in r["messages"]) for r in rows]
    removed = deduplicate(texts, list(range(len(rows))), DedupParams(), workers=min(2, os.cpu_count() or 1),
                          progress=False).removed if rows else {}
    rows = [r for i, r in enumerate(rows) if i not in removed]
    in_val = [int(hashlib.sha256(str(r["id"]).encode()).hexdigest(), 16) % 10_000 < config["val_fraction"] * 10_000
              for r in rows]
    val = [r for r, v in zip(rows, in_val) if v]
    train = [r for r, v in zip(rows, in_val) if not v]
    stats = {"new": len(new), "original": len(original), "near_duplicates_removed": len(removed),
             "train": len(train), "val": len(val)}
    return train, val, stats


# ---- estimate ---------------------------------------------------------------------------

def estimate(jobs: list[Job], config: dict, teacher: dict, judge: dict) -> dict:
    """Calls, tokens and cost before any call is made: prompt tokens from characters, completion
    tokens at each role's max_tokens (so output tokens and cost are upper bounds)."""
    per_token = config["estimate"]["chars_per_token"]
    teacher_in = sum(len(m["content"]) for job in jobs for m in job.messages) / per_token
    teacher_out = len(jobs) * teacher.get("max_tokens", 1024)
    rows = [("teacher", teacher, len(jobs), teacher_in, teacher_out)]
    if config["mode"] == "teacher":
        # A judge prompt holds the example (at most the teacher's prompt and answer) in its template.
        template = len(render_prompt("judge_score.j2", domain="", instruction="", response="")) / per_token
        rows.append(("judge", judge, len(jobs), teacher_in + teacher_out + len(jobs) * template,
                     len(jobs) * judge.get("max_tokens", 256)))
    out = {}
    for role, settings, calls, tokens_in, tokens_out in rows:
        online = settings.get("backend", "llm") == "llm"
        model = settings.get("model") if online else settings["backend"]
        price = settings["prices_per_1m"].get(model)
        cost = 0.0 if not online else None if price is None else (
            tokens_in * price["input"] + tokens_out * price["output"]) / 1e6
        out[role] = {"model": model, "calls": calls, "input_tokens": round(tokens_in),
                     "output_tokens_max": round(tokens_out), "cost_usd_max": cost}
    return out


# ---- the stage --------------------------------------------------------------------------

def distill(profile: str, clusters_dir: Path, curated: Path, out: Path, config_path: Path = CONFIG,
            estimate_only: bool = False, budget_usd: float | None = None, mode: str | None = None) -> dict:
    started = time.time()
    config = load_config(config_path, profile)
    if mode:
        config["mode"] = mode
    if budget_usd is not None:
        config["budget"]["usd"] = budget_usd
    if config["mode"] not in ("teacher", "self-consistency"):
        raise UserError(f"{config_path}: mode must be teacher or self-consistency, not {config['mode']!r}")
    clusters, members = load_clusters(clusters_dir)
    if not Path(curated).is_file():
        raise UserError(f"curated data not found: {curated} (run `make data` first)")
    teacher_settings, judge_settings = endpoint_settings("teacher", profile=profile), endpoint_settings("judge", profile=profile)
    teacher_params = {k: teacher_settings[k] for k in ("temperature", "max_tokens") if k in teacher_settings}
    judge_params = {k: judge_settings[k] for k in ("temperature", "max_tokens") if k in judge_settings}
    builder = teacher_jobs if config["mode"] == "teacher" else consistency_jobs
    jobs = builder(clusters, members, config, teacher_params)
    if estimate_only:
        return {"estimate": estimate(jobs, config, teacher_settings, judge_settings)}

    teacher = make_backend("teacher", profile, out / "cache", config)
    for job in jobs:
        job.keyed(teacher.model)
    # Held until the outputs are written: a rerun waiting for this run then finds them final.
    with CallLog(out / "calls.jsonl") as log:
        run_jobs(teacher, jobs, log, config, "teacher")
        if config["mode"] == "teacher":
            judge = make_backend("judge", profile, out / "cache", config)
            examples, rejected = collect_teacher(jobs, log)
            score_jobs = {job.key: score_job(job, example, judge_params).keyed(judge.model) for job, example in examples}
            run_jobs(judge, list(score_jobs.values()), log, config, "judge")
            kept, judged_out = build_from_teacher(examples, score_jobs, log, config, teacher.name)
            rejected += judged_out
            agreement = None
        else:
            kept, rejected, agreement = build_from_consistency(jobs, log, config, teacher.name)

        train, val, stats = mix(kept, Path(curated), config)
        cost, tokens = log.spend()
        kept_by = lambda key: dict(sorted(Counter(str(r["meta"][key]) for r in kept).items()))
        figures = {**stats, "teacher_calls": len(jobs), "kept_examples": len(kept), "rejected": len(rejected),
                   "rejected_by_reason": dict(Counter(r["reason"].split(":")[0] for r in rejected)),
                   "kept_by_cluster": kept_by("cluster_id"), "kept_by_kind": kept_by("kind"),
                   "kept_by_direction": kept_by("direction"),
                   "mix_by_source": dict(sorted(Counter(r["source"] for r in train + val).items())),
                   "spend_usd": round(cost, 6), "tokens": tokens, "agreement_by_domain": agreement}
        write_jsonl_atomic(out / "rejected.jsonl", sorted(rejected, key=lambda r: r["key"]))
        write_jsonl_atomic(out / "val.jsonl", val)
        write_jsonl_atomic(out / "train.jsonl", train)
        write_manifest(out, "distill_1c", {"clusters": Path(clusters_dir) / "clusters.json", "curated": curated,
                                            "config": config_path},
                       {"profile": profile, "teacher": teacher.name, **config}, figures, started)
    return figures


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.distill.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--clusters", type=Path, required=True, help="folder with clusters.json and members.jsonl")
    parser.add_argument("--curated", type=Path, required=True, help="curated 1A training data to mix in")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--mode", choices=["teacher", "self-consistency"], help="override the config's mode")
    parser.add_argument("--budget-usd", type=float, help="override the config's budget.usd")
    parser.add_argument("--estimate-only", action="store_true", help="print calls, tokens and cost; call nothing")
    args = parser.parse_args(argv)
    try:
        figures = distill(args.profile, args.clusters, args.curated, args.out, args.config,
                          args.estimate_only, args.budget_usd, args.mode)
    except BudgetReached as exc:
        print(f"budget reached ({exc}): stopped cleanly; every result so far is kept in {args.out / 'calls.jsonl'}. "
              "Raise the budget (BUDGET_USD=...) and rerun to continue.", file=sys.stderr)
        sys.exit(EXIT_BUDGET)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    run_cli(main)
