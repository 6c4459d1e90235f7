"""The 1C before/after table (`make eval-1c`): for each 1B failure cluster, how many of its
prompts the new model now passes, and per domain the pass rate before and after, with any
drop larger than the tolerance flagged as a regression (catastrophic forgetting shows here).
Benchmark scores before/after come from glue.eval.evaluate's baseline comparison beside it.

The clusters' own prompts were answered by the teacher and trained on, so "passing now" is not
held out. Given the two evaluation folders (--eval-before/--eval-after), the table also shows
the pass rate on held-out prompts of each cell of the tiny profile's generated world (from
lm-eval's per-sample logs of the tiny_world_* tasks), the cells the clusters target marked.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from glue.core.io import UserError, iter_jsonl, run_cli, write_text_atomic
from glue.core.manifest import write_manifest

PASS = ("win", "tie")  # a tie with the reference is a correct answer


def verdicts(folder: Path) -> dict[str, dict]:
    path = folder / "judgements.jsonl"
    if not path.is_file():
        raise UserError(f"{path} not found: run the failures stage on that model first")
    return {str(r["id"]): r for r in iter_jsonl(path)}


def pass_rate(rows: list[dict]) -> float | None:
    judged = [r for r in rows if r["verdict"] in ("win", "tie", "loss")]
    return sum(r["verdict"] in PASS for r in judged) / len(judged) if judged else None


def cell_rates(eval_dir: Path) -> dict[str, float]:
    """Held-out pass rate per generated-world cell from an evaluation folder's sample logs."""
    passed: dict[str, list[float]] = defaultdict(list)
    for path in sorted((eval_dir / "results").glob("samples_tiny_world_*.jsonl")):
        for sample in iter_jsonl(path):
            if cell := (sample.get("doc") or {}).get("cell"):
                passed[cell].append(float(sample["exact_match"]))
    return {cell: sum(v) / len(v) for cell, v in sorted(passed.items())}


def held_out_cells(eval_before: Path, eval_after: Path, clusters: list[dict]) -> list[dict]:
    before, after = cell_rates(eval_before), cell_rates(eval_after)
    if not before and not after:
        return []  # a suite without the world's tasks (the real profile's)
    if not before or not after:
        raise UserError(f"no tiny_world_* sample logs under {eval_before}/results and {eval_after}/results: "
                        "evaluate both models with a suite that has the world tasks")
    targeted = {c["world_cell"]["label"] for c in clusters if c.get("world_cell") and not c.get("is_noise")}
    return [{"cell": cell, "targeted": cell in targeted, "before": before.get(cell), "after": after.get(cell),
             "delta": None if cell not in before or cell not in after else after[cell] - before[cell]}
            for cell in sorted(set(before) | set(after))]


def compare(before_dir: Path, after_dir: Path, clusters_dir: Path, tolerance: float,
            eval_before: Path | None = None, eval_after: Path | None = None) -> dict:
    before, after = verdicts(before_dir), verdicts(after_dir)
    clusters = json.loads((clusters_dir / "clusters.json").read_text(encoding="utf-8"))["clusters"]
    cluster_rows = []
    for cluster in sorted(clusters, key=lambda c: c["cluster_id"]):
        ids = [str(i) for i in cluster["member_ids"]]
        now = [after[i]["verdict"] for i in ids if i in after]
        cluster_rows.append({"cluster_id": cluster["cluster_id"], "name": (cluster.get("label") or {}).get("name", ""),
                             "failures_1a": len(ids), "passing_now": sum(v in PASS for v in now),
                             "still_failing": sum(v == "loss" for v in now), "not_judged": len(ids) - len(now)})
    domains = defaultdict(lambda: ([], []))
    for rows, side in ((before, 0), (after, 1)):
        for row in rows.values():
            domains[row["domain"]][side].append(row)
    domain_rows = []
    for domain, (b, a) in sorted(domains.items()):
        rate_b, rate_a = pass_rate(b), pass_rate(a)
        delta = None if rate_b is None or rate_a is None else rate_a - rate_b
        domain_rows.append({"domain": domain, "before": rate_b, "after": rate_a, "delta": delta,
                            "regression": delta is not None and delta < -tolerance})
    overall = {"before": pass_rate(list(before.values())), "after": pass_rate(list(after.values()))}
    result = {"clusters": cluster_rows, "domains": domain_rows, "overall": overall, "tolerance": tolerance,
              "regressions": [r["domain"] for r in domain_rows if r["regression"]]}
    cells = held_out_cells(eval_before, eval_after, clusters) if eval_before and eval_after else []
    if cells:
        hit = [c for c in cells if c["targeted"] and c["delta"] is not None]
        result["held_out_cells"] = cells
        result["targeted_held_out"] = {
            "before": sum(c["before"] for c in hit) / len(hit) if hit else None,
            "after": sum(c["after"] for c in hit) / len(hit) if hit else None}
    return result


def markdown(result: dict) -> str:
    pct = lambda v: "n/a" if v is None else f"{100 * v:.1f}%"
    lines = ["# 1C before/after", "",
             f"Pass rate (win or tie against the reference): {pct(result['overall']['before'])} -> "
             f"{pct(result['overall']['after'])}", "", "## Failure clusters of 1A", "",
             "| cluster | name | 1A failures | passing now | still failing | not judged |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['cluster_id']} | {r['name']} | {r['failures_1a']} | {r['passing_now']} | {r['still_failing']} | "
              f"{r['not_judged']} |" for r in result["clusters"]]
    lines += ["", f"## Domains (regression: a drop of more than {100 * result['tolerance']:.0f} points)", "",
              "| domain | before | after | change | regression |", "|---|---|---|---|---|"]
    for r in result["domains"]:
        change = "n/a" if r["delta"] is None else f"{100 * r['delta']:+.1f}"
        lines.append(f"| {r['domain']} | {pct(r['before'])} | {pct(r['after'])} | {change} | "
                     f"{'REGRESSION' if r['regression'] else ''} |")
    if "held_out_cells" in result:
        targeted = result["targeted_held_out"]
        lines += ["", "## Held-out prompts of the generated world, per cell (lm-eval)", "",
                  f"Cells the clusters target: {pct(targeted['before'])} -> {pct(targeted['after'])} (mean)", "",
                  "| cell | targeted | before | after | change |", "|---|---|---|---|---|"]
        for r in result["held_out_cells"]:
            change = "n/a" if r["delta"] is None else f"{100 * r['delta']:+.1f}"
            lines.append(f"| {r['cell']} | {'yes' if r['targeted'] else ''} | {pct(r['before'])} | {pct(r['after'])} "
                         f"| {change} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.eval.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="failures folder of the earlier model (1A)")
    parser.add_argument("--after", type=Path, required=True, help="failures folder of the new model (1C)")
    parser.add_argument("--clusters", type=Path, required=True, help="the 1B clusters folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tolerance", type=float, default=0.05, help="allowed drop in a domain's pass rate")
    parser.add_argument("--eval-before", type=Path, help="evaluation folder of the earlier model (held-out cells)")
    parser.add_argument("--eval-after", type=Path, help="evaluation folder of the new model (held-out cells)")
    args = parser.parse_args(argv)
    started = time.time()
    result = compare(args.before, args.after, args.clusters, args.tolerance, args.eval_before, args.eval_after)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "compare.json", json.dumps(result, indent=2) + "\n")
    write_text_atomic(args.out / "compare.md", markdown(result))
    write_manifest(args.out, "compare_1c", {"before": args.before / "judgements.jsonl",
                                            "after": args.after / "judgements.jsonl",
                                            "clusters": args.clusters / "clusters.json"},
                   {"tolerance": args.tolerance}, {"overall": result["overall"], "regressions": result["regressions"],
                                                   "targeted_held_out": result.get("targeted_held_out")},
                   started)
    print(markdown(result))


if __name__ == "__main__":
    run_cli(main)
