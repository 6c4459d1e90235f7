"""The curate stage's report a person checks: counts per source, step and domain, score and
length histograms (PNG), and the removed near-duplicates next to the rows they duplicate."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from glue.core.io import write_jsonl_atomic, write_text_atomic  # noqa: E402

SHOWN_DUPLICATES = 30


def _snippet(record: dict, width: int = 90) -> str:
    text = " ".join(m["content"] for m in record["messages"] if m["role"] != "system")
    text = " ".join(text.split()).replace("|", "\\|")
    return text[:width] + ("…" if len(text) > width else "")


def _histogram(path: Path, series: dict[str, list[float]], title: str, xlabel: str, lines: dict[str, float]) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    values = [v for vs in series.values() for v in vs]
    bins = 40 if len(values) > 200 else 15
    ax.hist(list(series.values()), bins=bins, stacked=True, label=list(series))
    for label, x in lines.items():
        ax.axvline(x, color="black", linestyle="--", linewidth=1)
        ax.annotate(label, (x, ax.get_ylim()[1] * 0.95), rotation=90, ha="right", va="top", fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylabel="rows")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(folder: Path, curated: list[dict], rejects: list[dict], duplicates: list[dict],
                 figures: dict, parameters: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    scored = [r for r in rejects if r.get("score") is not None] + curated  # over-long rows are not scored
    by_tier: dict[str, list[float]] = {}
    for record in scored:
        tier = parameters["sources"][record["source"]]["tier"]
        by_tier.setdefault(f"{tier} tier", []).append(record["score"])
    _histogram(folder / "scores.png", by_tier, "Quality score of every loaded row", "score",
               {"threshold (filter tier)": parameters["scoring"]["threshold"]})
    lengths: dict[str, list[float]] = {}
    for record in curated:
        lengths.setdefault(record["source"], []).append(record["features"]["tokens"])
    _histogram(folder / "lengths.png", lengths, "Length of the curated rows", "tokens (profile tokenizer, chat template)",
               {"min_tokens": parameters["min_tokens"], "sequence_len": parameters["max_tokens"]})

    steps = list(figures["rejected"])
    lines = ["# Curated training set", "",
             f"{figures['rows_read']} rows read, **{figures['rows_kept']} kept** "
             f"({figures['train']} train, {figures['val']} validation). Profile `{parameters['profile']}`, "
             f"tokenizer `{parameters['tokenizer']}`.", "",
             "## Rows per source and step", "",
             "| source | tier | read | " + " | ".join(steps) + " | kept |",
             "|---|---|---:|" + "---:|" * len(steps) + "---:|"]
    for name, c in figures["per_source"].items():
        tier = parameters["sources"][name]["tier"]
        lines.append(f"| {name} | {tier} | {c['read']} | " + " | ".join(str(c[s]) for s in steps) + f" | {c['kept']} |")
    domains = sorted({r["domain"] for r in curated})
    table = Counter((r["source"], r["domain"]) for r in curated)
    lines += ["", "## Curated rows per source and domain", "",
              "| source | " + " | ".join(domains) + " |", "|---|" + "---:|" * len(domains)]
    for name in figures["per_source"]:
        lines.append(f"| {name} | " + " | ".join(str(table[(name, d)]) for d in domains) + " |")
    lines += ["", "## Plots", "", "![scores](scores.png)", "", "![lengths](lengths.png)", "",
              f"## Removed near-duplicates ({len(duplicates)}; all in duplicates.jsonl)", "",
              "| Jaccard | removed | kept | removed row | kept row |", "|---:|---|---|---|---|"]
    for d in duplicates[:SHOWN_DUPLICATES]:
        lines.append(f"| {d['jaccard']} | {d['removed']['id']} | {d['kept']['id']} | "
                     f"{_snippet(d['removed'])} | {_snippet(d['kept'])} |")
    lines += ["", "## Parameters", "", "```json", json.dumps(parameters, indent=2, default=str), "```", ""]
    write_text_atomic(folder / "report.md", "\n".join(lines))
    write_jsonl_atomic(folder / "duplicates.jsonl", (
        {"jaccard": d["jaccard"], "removed_id": d["removed"]["id"], "kept_id": d["kept"]["id"],
         "removed": d["removed"]["messages"], "kept": d["kept"]["messages"]} for d in duplicates))
