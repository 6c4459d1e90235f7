"""One table that tells the truth about every compressed artefact: size on disk, bits per
parameter, perplexity on a held-out split, recovery against the merged (reference) model,
and the evaluation suite's score where its results exist. Writes report.md, report.json and
a size-vs-quality plot (size_vs_quality.png).

Perplexity is measured here, on the same token ids for every artefact (the held-out split
rendered with the chat template and tokenized by the reference's tokenizer), over the
assistant's answer tokens only: what the model was trained to write (prompt tokens are masked
in training, and their noise would hide a quantization's cost); GGUF files are
scored through llama-cpp-python. Eval-suite scores are not measured here:
they are read from `<eval-dir>/<artefact name>/summary.json` (written by `python -m
glue.eval.evaluate --out <eval-dir>/<artefact name>`) when that file exists, "-" otherwise.

Runs in the compression environment (compressed-tensors checkpoints need it to load).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from glue.core.checkpoints import disk_bytes
from glue.core.io import UserError, atomic_path, run_cli, write_text_atomic
from glue.core.manifest import write_manifest
from glue.core.records import answer_loss, answer_tokens


def perplexity(model_dir: Path, scored: list[tuple[list[int], int]]) -> tuple[float, int]:
    """Perplexity of a checkpoint on the answer tokens of `scored` ((token ids, first answer
    token) pairs, each conversation on its own); returns (ppl, answer tokens)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval()
    nll, tokens = answer_loss(model, scored, f"perplexity {Path(model_dir).name}")
    return math.exp(nll), tokens


def eval_score(summary: Path) -> float | None:
    """Mean task score in an evaluation summary written by glue/eval/evaluate.py (its
    `summary.json`: rows of task/metric/score); None when the file does not exist."""
    if not summary.is_file():
        return None
    try:
        scores = [row["score"] for row in json.loads(summary.read_text())["rows"] if row["score"] is not None]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{summary}: not a glue.eval.evaluate summary.json (expected rows of task/metric/score)") from None
    return sum(scores) / len(scores) if scores else None


def measure(reference: Path, artefacts: list[Path], heldout: Path, samples: int, max_seq_length: int,
            eval_dir: Path | None, seed: int = 0) -> list[dict]:
    """One row per checkpoint, the reference first."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    for artefact in [reference, *artefacts]:
        if not (Path(artefact).suffix == ".gguf" and Path(artefact).is_file()
                or (Path(artefact) / "config.json").is_file()):
            raise UserError(f"{artefact}: neither a checkpoint folder (no config.json) nor a GGUF file; "
                            "run `make compress` / `make gguf` first")
    tokenizer = AutoTokenizer.from_pretrained(reference)
    # Every artefact is scored on the same token ids (GGUF files too: `make gguf` checks that
    # llama.cpp tokenizes exactly like this tokenizer).
    scored = answer_tokens(heldout, tokenizer, samples, seed, max_seq_length)
    if not scored:
        raise UserError(f"{heldout}: no record that ends with an assistant turn and fits {max_seq_length} tokens")
    # Bits per parameter are counted against the reference model's parameters: a packed
    # 4-bit checkpoint stores fewer, larger tensors, so its own count would mislead.
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(reference))
    parameters = sum(p.numel() for p in skeleton.parameters())
    rows = []
    for artefact in map(Path, [reference, *artefacts]):
        if artefact.suffix == ".gguf":
            from glue.compress.gguf import perplexity as gguf_perplexity

            (ppl, tokens), weights = gguf_perplexity(artefact, scored), artefact.stat().st_size
        else:
            (ppl, tokens), weights = perplexity(artefact, scored), disk_bytes(artefact, ".safetensors")
        rows.append({
            "artefact": artefact.name, "path": str(artefact), "weights_bytes": weights,
            "bits_per_parameter": 8 * weights / parameters, "perplexity": ppl, "tokens": tokens,
            "eval_score": eval_score(eval_dir / artefact.name / "summary.json") if eval_dir else None,
        })
    ref = rows[0]
    for row in rows:
        row["ppl_recovery_pct"] = 100 * ref["perplexity"] / row["perplexity"]
        row["eval_recovery_pct"] = (100 * row["eval_score"] / ref["eval_score"]
                                    if row["eval_score"] is not None and ref["eval_score"] else None)
    return rows


def markdown(rows: list[dict], heldout: Path) -> str:
    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [
        "# Compression report",
        "",
        f"Perplexity: token-level, on the assistant answers of `{heldout}` rendered with the chat template "
        f"({rows[0]['tokens']} answer tokens). "
        "PPL recovery = reference perplexity / artefact perplexity. Eval score: the evaluation suite's "
        "mean task score where its `summary.json` exists (\"-\": not evaluated). Bits/param: weights on disk "
        "x 8 / the reference model's parameter count (for GGUF files: the whole file).",
        "",
        "| artefact | weights (MB) | bits/param | perplexity | PPL recovery % | eval score | eval recovery % |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['artefact']} | {r['weights_bytes'] / 1e6:.3f} | {r['bits_per_parameter']:.2f} | "
                     f"{r['perplexity']:.3f} | {r['ppl_recovery_pct']:.1f} | {fmt(r['eval_score'], '.4f')} | "
                     f"{fmt(r['eval_recovery_pct'], '.1f')} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_eval = any(r["eval_score"] is not None for r in rows)
    fig, axes = plt.subplots(1, 2 if with_eval else 1, figsize=(10 if with_eval else 6, 4.2), squeeze=False)
    panels = [("perplexity", "held-out perplexity (lower is better)")]
    if with_eval:
        panels.append(("eval_score", "eval-suite score (higher is better)"))
    for ax, (key, label) in zip(axes[0], panels):
        for r in rows:
            if r[key] is not None:
                ax.scatter(r["weights_bytes"] / 1e6, r[key])
                ax.annotate(r["artefact"], (r["weights_bytes"] / 1e6, r[key]), fontsize=8,
                            xytext=(4, 4), textcoords="offset points")
        ax.set(xlabel="weights on disk (MB)", ylabel=label)
        ax.grid(alpha=0.3)
    fig.suptitle("size vs quality")
    fig.tight_layout()
    with atomic_path(target, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def report(reference: Path, artefacts: list[Path], heldout: Path, out: Path, samples: int = 200,
           max_seq_length: int = 2048, eval_dir: Path | None = None, overwrite: bool = False) -> list[dict]:
    started = time.time()
    rows = measure(Path(reference), [Path(a) for a in artefacts], Path(heldout), samples, max_seq_length,
                   Path(eval_dir) if eval_dir else None)
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        write_text_atomic(tmp / "report.md", markdown(rows, heldout))
        write_text_atomic(tmp / "report.json", json.dumps(rows, indent=2) + "\n")
        plot(rows, tmp / "size_vs_quality.png")
        write_manifest(tmp, "compress_report", {"reference": reference, "heldout": heldout,
                                                **{f"artefact:{Path(a).name}": a for a in artefacts}},
                       {"samples": samples, "max_seq_length": max_seq_length, "eval_dir": str(eval_dir)},
                       {r["artefact"]: {k: r[k] for k in ("weights_bytes", "bits_per_parameter", "perplexity")}
                        for r in rows}, started)
    return rows


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.compress.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, required=True, help="the merged full-precision checkpoint")
    parser.add_argument("artefacts", type=Path, nargs="+", help="compressed checkpoint folders and GGUF files")
    parser.add_argument("--heldout", type=Path, required=True, help="held-out split (JSONL with `messages`)")
    parser.add_argument("--out", type=Path, required=True, help="folder for report.md, report.json, the plot")
    parser.add_argument("--samples", type=int, default=200, help="held-out records scored per artefact")
    parser.add_argument("--max-seq-length", type=int, default=2048)
    parser.add_argument("--eval-dir", type=Path, help="folder of <artefact name>/summary.json written by glue.eval.evaluate")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    rows = report(args.reference, args.artefacts, args.heldout, args.out, args.samples, args.max_seq_length,
                  args.eval_dir, args.overwrite)
    print(markdown(rows, args.heldout))
    print(f"written to {args.out}/report.md, report.json, size_vs_quality.png")


if __name__ == "__main__":
    run_cli(main)
