"""Phase 3: one domain modifier's training data (`make modifier-data DOMAIN=...`): the curated
rows of the domain, plus targeted examples for the base's failures in it, made by Phase 1B's
judge and clusters and Phase 1C's teacher, run on the domain's rows only (their own code, so
their endpoints, judge, budget and resume rules too).

The base answers a seeded sample of the domain's training rows (`failures.prompts` in
templates/modifiers.yml), not its held-out rows: those stay held out, for the modifier's
validation loss and for `make modifiers-report`. Fewer than two failures leave nothing to
cluster; the modifier then trains on the curated rows alone, and the manifest says so.

Writes under work/<profile>/modifiers/<domain>/:
  curated/train.jsonl, val.jsonl  the domain's curated rows (its `data:` domains)
  curated/prompts.jsonl           the sample the base answers
  failures/, clusters/            glue.eval.failures and glue.eval.cluster on that sample
  distill/                        glue.distill.build for those clusters (calls.jsonl: a rerun resumes)
  data/train.jsonl, val.jsonl     what the modifier's Axolotl config reads (the paths it names), with
                                  manifest.json (inputs with hashes, counts, time taken)
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

from glue.core.io import UserError, iter_jsonl, load_yaml, run_cli, write_jsonl_atomic
from glue.core.manifest import write_manifest
from glue.core.modifiers import CONFIG, load_modifiers, rendered_config
from glue.core.paths import load_profile
from glue.distill.build import EXIT_BUDGET, distill
from glue.distill.jobs import BudgetReached
from glue.eval.cluster import cluster_failures
from glue.eval.failures import collect_failures


def select_rows(path: str | Path, domains: list[str]) -> list[dict]:
    """The rows of a curated split whose `domain` is one of `domains`."""
    rows = list(iter_jsonl(path))
    chosen = [r for r in rows if r.get("domain") in domains]
    if not chosen:
        present = ", ".join(f"{d} ({n})" for d, n in Counter(r.get("domain") for r in rows).most_common())
        raise UserError(f"{path}: no rows of domain {', '.join(domains)} (it has: {present or 'no rows'}); add the "
                        "domain's rules or sources in templates/data/sources.yml and run `make data OVERWRITE=1`")
    return chosen


def sample(rows: list[dict], n: int, seed: int) -> list[dict]:
    """`n` rows (all when fewer), the same ones for the same seed, in their original order."""
    keep = sorted(random.Random(seed).sample(range(len(rows)), min(n, len(rows))))
    return [rows[i] for i in keep]


def combine(curated_train: list[dict], curated_val: list[dict], new_train: list[dict],
            new_val: list[dict]) -> tuple[list[dict], list[dict]]:
    """The modifier's splits: every curated row of the domain plus the distilled rows, each id once
    (1C's mix re-samples curated rows), and no row in both splits."""
    train = list({str(r["id"]): r for r in curated_train + new_train}.values())
    in_train = {str(r["id"]) for r in train}
    val = [r for r in {str(r["id"]): r for r in curated_val + new_val}.values() if str(r["id"]) not in in_train]
    return train, val


def build(profile: str, domain: str, overwrite: bool = False, allow_code: bool = False,
          budget_usd: float | None = None) -> dict:
    started = time.time()
    config = load_modifiers(profile)
    if domain not in config["domains"]:
        raise UserError(f"{CONFIG}: no domain {domain!r} (domains: {', '.join(config['domains'])})")
    spec, search = config["domains"][domain], config["failures"]
    axolotl_config = rendered_config(profile, domain)
    cfg = load_yaml(axolotl_config)
    base = Path(cfg["base_model"])
    train_path, val_path = Path(cfg["datasets"][0]["path"]), Path(cfg["test_datasets"][0]["path"])
    if train_path.exists() and not overwrite:
        raise UserError(f"{train_path} already exists: train on it (`make modifier DOMAIN={domain}`), "
                        "or build it again with OVERWRITE=1")
    data_dir = Path(load_profile(profile)["data_dir"])
    root = Path(load_profile(profile)["work_dir"]) / "modifiers" / domain

    curated_train = select_rows(data_dir / "train.jsonl", spec["data"])
    curated_val = select_rows(data_dir / "val.jsonl", spec["data"])
    write_jsonl_atomic(root / "curated" / "train.jsonl", curated_train)
    write_jsonl_atomic(root / "curated" / "val.jsonl", curated_val)
    prompts = root / "curated" / "prompts.jsonl"
    write_jsonl_atomic(prompts, sample(curated_train, int(search["prompts"]), int(search["seed"])))

    judged = collect_failures(base, prompts, root / "failures", profile, allow_code=allow_code,
                              skip_consistency=True, overwrite=True)
    failures = judged["overall"]["loss"]
    new_train, new_val, clusters, distilled = [], [], None, None
    if failures >= 2:
        doc = cluster_failures(root / "failures" / "failures.jsonl", root / "clusters", profile, overwrite=True)
        clusters = doc["n_clusters"]
        distilled = distill(profile, root / "clusters", root / "curated" / "train.jsonl", root / "distill",
                            budget_usd=budget_usd)
        new_train = list(iter_jsonl(root / "distill" / "train.jsonl"))
        new_val = list(iter_jsonl(root / "distill" / "val.jsonl"))
    else:
        print(f"{domain}: {failures} failure(s) on {judged['items']} prompts, too few to cluster: "
              "the modifier trains on the curated rows alone", file=sys.stderr)

    train, val = combine(curated_train, curated_val, new_train, new_val)
    write_jsonl_atomic(val_path, val)
    write_jsonl_atomic(train_path, train)
    figures = {"curated_train": len(curated_train), "curated_val": len(curated_val), "prompts": judged["items"],
               "failures": failures, "failure_rate": judged["overall"]["loss_rate"], "clusters": clusters,
               "distilled_new": distilled["new"] if distilled else 0, "train": len(train), "val": len(val),
               "train_by_source": dict(Counter(r["source"] for r in train).most_common()),
               "distill_spend_usd": distilled["spend_usd"] if distilled else 0.0}
    write_manifest(train_path.parent, "3_modifier_data",
                   {"base": base, "curated_train": data_dir / "train.jsonl", "curated_val": data_dir / "val.jsonl",
                    "modifiers_config": CONFIG, "axolotl_config": axolotl_config},
                   {"profile": profile, "domain": domain, "data_domains": spec["data"], "failures": search,
                    "allow_code_exec": allow_code}, figures, started)
    return figures


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.modifiers.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", required=True)
    parser.add_argument("--domain", required=True, help="a domain of templates/modifiers.yml")
    parser.add_argument("--overwrite", action="store_true", help="replace the domain's data/train.jsonl and val.jsonl")
    parser.add_argument("--allow-code-exec", action="store_true",
                        help="let the judge run code tests (executes model-written code; also HF_ALLOW_CODE_EVAL=1)")
    parser.add_argument("--budget-usd", type=float, help="the teacher's budget (default: templates/distill.yml)")
    args = parser.parse_args(argv)
    try:
        figures = build(args.profile, args.domain, args.overwrite, args.allow_code_exec, args.budget_usd)
    except BudgetReached as exc:
        calls = Path(load_profile(args.profile)["work_dir"]) / "modifiers" / args.domain / "distill" / "calls.jsonl"
        print(f"budget reached ({exc}): stopped cleanly; every teacher call so far is kept in {calls}. Raise the budget "
              "(BUDGET_USD=...) and rerun to continue.", file=sys.stderr)
        sys.exit(EXIT_BUDGET)
    print(f"{args.domain}: {figures['train']} training rows ({figures['curated_train']} curated, "
          f"{figures['distilled_new']} distilled for {figures['failures']} failures in "
          f"{figures['clusters'] or 0} clusters), {figures['val']} validation rows")


if __name__ == "__main__":
    run_cli(main)
