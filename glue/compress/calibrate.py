"""Fit a softmax temperature that calibrates a model's confidence (2F), report the
expected calibration error (ECE) before and after, and draw a reliability diagram.

Two kinds of confidence (--mode):
- `tokens` (default): the probability the model gives its top next token at each token of the
  last assistant turn of held-out records (the project's `messages` format); "correct" when
  that token is the reference token.
- `choices`: multiple-choice questions (MMLU's `question`, `choices`, `answer` fields): the
  softmax over the answer letters' logits after the question; "correct" when the most likely
  letter is the right one. This is the per-question confidence a router acts on.
The held-out set is cut in two with a fixed seed: the temperature is fitted on one half
(minimum negative log-likelihood, Guo et al. 2017) and ECE is measured on the other, so the
"after" figure is not scored on the data it was fitted on. The router divides logits by the
temperature before reading confidence: it is written to `<model>/calibration.json` under the
mode's name ({"tokens": {...}, "choices": {...}}), so it travels with the model (and into `make
package`).

Runs in the compression environment (compressed-tensors checkpoints need it to load).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from glue.core.io import UserError, atomic_path, iter_jsonl, require_file, run_cli, write_text_atomic
from glue.core.manifest import write_manifest
from glue.core.records import answer_span, load_conversations

BINS = 15
LETTERS = "ABCDEFGHIJ"
CONFIDENCE = {"tokens": "softmax(logits / temperature) of the top next token",
              "choices": "softmax(answer-letter logits / temperature) of the most likely choice"}
UNIT = {"tokens": "tokens", "choices": "questions"}


def load_choice_questions(path: Path) -> list[tuple[str, list[str], int]]:
    """(question, choices, index of the right choice) of every record of an MMLU-style JSONL."""
    questions = []
    for where, record in iter_jsonl(path, with_location=True):
        question, choices, answer = record.get("question"), record.get("choices"), record.get("answer")
        if not (isinstance(question, str) and isinstance(choices, list) and 2 <= len(choices) <= len(LETTERS)
                and all(isinstance(c, str) for c in choices) and isinstance(answer, int)
                and 0 <= answer < len(choices)):
            raise UserError(f"{where}: a multiple-choice record needs `question` (text), `choices` (2 to "
                            f"{len(LETTERS)} texts) and `answer` (the index of the right choice)")
        questions.append((question, choices, answer))
    if len({len(c) for _, c, _ in questions}) > 1:
        raise UserError(f"{path}: every question needs the same number of choices "
                        f"(found {sorted({len(c) for _, c, _ in questions})})")
    return questions


def choice_logits(model, tokenizer, questions: list[tuple[str, list[str], int]], max_seq_length: int):
    """The logits of the answer letters after each question (rendered with the chat template),
    and the right letters' indices: (float32 [n, choices], int64 [n])."""
    import torch
    from tqdm import tqdm

    letters = LETTERS[:len(questions[0][1])]
    letter_ids = [tokenizer(letter, add_special_tokens=False)["input_ids"] for letter in letters]
    if any(len(ids) != 1 for ids in letter_ids):
        raise UserError(f"{tokenizer.name_or_path}: the tokenizer splits an answer letter into several tokens; "
                        "use --mode tokens")
    letter_ids = [ids[0] for ids in letter_ids]
    rows, targets = [], []
    for question, choices, answer in tqdm(questions, desc="scoring questions", unit="question"):
        content = "\n".join([question, *(f"{l}. {c}" for l, c in zip(letters, choices)),
                              "Answer with the letter of the correct choice."])
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                               add_generation_prompt=True, tokenize=False)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_seq_length:]
        with torch.no_grad():
            rows.append(model(input_ids=torch.tensor([ids])).logits[0, -1, letter_ids].float())
        targets.append(answer)
    return torch.stack(rows), torch.tensor(targets)


def load_model(model_dir: Path):
    """(model, tokenizer) of a checkpoint folder, loaded once for both halves of the held-out set."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").eval(), AutoTokenizer.from_pretrained(model_dir)


def assistant_logits(model, tokenizer, conversations: list[list[dict]], max_tokens: int, max_seq_length: int):
    """Logits predicting each token of each conversation's closing assistant turn, and the
    reference tokens: (float32 [n, vocab], int64 [n]), at most `max_tokens` rows."""
    import torch
    from tqdm import tqdm

    rows, targets, kept = [], [], 0
    for messages in tqdm(conversations, desc="scoring held-out records", unit="record"):
        if kept >= max_tokens:
            break
        span = answer_span(messages, tokenizer, max_seq_length)
        if span is None:
            continue
        ids, start = span
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        take = min(len(ids) - start, max_tokens - kept)
        rows.append(logits[start - 1: start - 1 + take])  # position t predicts token t + 1
        targets.append(torch.tensor(ids[start: start + take]))
        kept += take
    if not rows:
        raise UserError("no scorable assistant turns in the held-out split (records must end with an "
                        f"assistant message that fits {max_seq_length} tokens)")
    return torch.cat(rows), torch.cat(targets)


def fit_temperature(logits, targets) -> float:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) on the targets."""
    import torch

    log_t = torch.zeros(1, requires_grad=True)  # optimise log T: T stays positive, starts at 1
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def confidence_stats(logits, targets, temperature: float, bins: int = BINS) -> dict:
    """ECE, NLL and accuracy of the top-token confidence at `temperature`, with per-bin
    accuracy/confidence/count for the reliability diagram."""
    import torch

    probs = torch.softmax(logits / temperature, dim=-1)
    confidence, predicted = probs.max(dim=-1)
    correct = (predicted == targets).float()
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.clamp(torch.bucketize(confidence, edges[1:-1]), 0, bins - 1)
    per_bin, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        if count:
            acc, conf = float(correct[mask].mean()), float(confidence[mask].mean())
            ece += count / len(targets) * abs(acc - conf)
            per_bin.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count,
                            "accuracy": acc, "confidence": conf})
    nll = float(torch.nn.functional.cross_entropy(logits / temperature, targets))
    return {"ece": ece, "nll": nll, "accuracy": float(correct.mean()), "count": len(targets), "bins": per_bin}


def reliability_diagram(before: dict, after: dict, temperature: float, mode: str, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, stats, title in ((axes[0], before, "before (T = 1)"), (axes[1], after, f"after (T = {temperature:.3f})")):
        for b in stats["bins"]:
            ax.bar(b["low"], b["accuracy"], width=b["high"] - b["low"], align="edge",
                   edgecolor="black", color="tab:blue", alpha=0.8)
            ax.plot((b["low"] + b["high"]) / 2, b["confidence"], "o", color="tab:red", markersize=4)
        ax.plot([0, 1], [0, 1], "--", color="gray")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=f"confidence ({'top-token' if mode == 'tokens' else 'top-choice'} probability)",
               title=f"{title}\nECE {stats['ece']:.4f}, {stats['count']} {UNIT[mode]}")
    axes[0].set_ylabel("accuracy (bars); mean confidence (red dots)")
    fig.tight_layout()
    with atomic_path(target, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def calibrate(model_dir: Path, heldout: Path, out: Path, max_tokens: int = 4096, max_seq_length: int = 2048,
              seed: int = 0, overwrite: bool = False, mode: str = "tokens") -> dict:
    started = time.time()
    model_dir, out = Path(model_dir), Path(out)
    require_file(model_dir / "config.json", "model config", "point --model at a checkpoint folder")
    if mode not in CONFIDENCE:
        raise UserError(f"--mode must be one of {', '.join(CONFIDENCE)}, got {mode!r}")
    records = load_conversations(heldout) if mode == "tokens" else load_choice_questions(heldout)
    if len(records) < 2:
        raise UserError(f"{heldout}: need at least 2 held-out records (one to fit, one to measure)")
    random.Random(seed).shuffle(records)
    half = len(records) // 2

    model, tokenizer = load_model(model_dir)

    def score(part):
        if mode == "tokens":
            return assistant_logits(model, tokenizer, part, max_tokens, max_seq_length)
        return choice_logits(model, tokenizer, part, max_seq_length)

    (fit_logits, fit_targets), (test_logits, test_targets) = score(records[:half]), score(records[half:])
    temperature = fit_temperature(fit_logits, fit_targets)
    before = confidence_stats(test_logits, test_targets, 1.0)
    after = confidence_stats(test_logits, test_targets, temperature)
    fit_nll = {"before": confidence_stats(fit_logits, fit_targets, 1.0)["nll"],
               "after": confidence_stats(fit_logits, fit_targets, temperature)["nll"]}
    unit = UNIT[mode]
    result = {
        "temperature": temperature,
        "mode": mode,
        "confidence": CONFIDENCE[mode],
        "fitted_on": {"data": str(heldout), "records": half, unit: len(fit_targets), "nll": fit_nll},
        "measured_on": {"records": len(records) - half, unit: len(test_targets),
                        "ece_before": before["ece"], "ece_after": after["ece"],
                        "nll_before": before["nll"], "nll_after": after["nll"],
                        "top1_accuracy": before["accuracy"]},
    }
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.mkdir(parents=True)
        write_text_atomic(tmp / "calibration.json", json.dumps({**result, "before": before, "after": after},
                                                                 indent=2) + "\n")
        reliability_diagram(before, after, temperature, mode, tmp / "reliability.png")
        write_manifest(tmp, "calibrate", {"model": model_dir, "heldout": heldout},
                       {"mode": mode, "max_tokens": max_tokens, "max_seq_length": max_seq_length, "seed": seed,
                        "bins": BINS},
                       {"temperature": temperature, "ece_before": before["ece"], "ece_after": after["ece"],
                        "nll_before": before["nll"], "nll_after": after["nll"]}, started)
    # One file per model, one entry per mode: a later fit of the other mode keeps this one.
    try:
        saved = json.loads((model_dir / "calibration.json").read_text())
    except (OSError, ValueError):
        saved = {}
    saved = {k: v for k, v in saved.items() if k in CONFIDENCE} if isinstance(saved, dict) else {}
    write_text_atomic(model_dir / "calibration.json", json.dumps({**saved, mode: result}, indent=2) + "\n")
    return result


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.compress.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint folder (merged or compressed)")
    parser.add_argument("--heldout", type=Path, required=True,
                        help="held-out JSONL: `messages` records (--mode tokens) or `question`/`choices`/`answer` "
                             "records (--mode choices)")
    parser.add_argument("--mode", choices=sorted(CONFIDENCE), default="tokens", help="what confidence is calibrated")
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for calibration.json, reliability.png and the manifest")
    parser.add_argument("--max-tokens", type=int, default=4096,
                        help="answer tokens kept per half (the logits are held in memory: tokens x vocabulary)")
    parser.add_argument("--max-seq-length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0, help="how the held-out split is cut into fit/measure halves")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    result = calibrate(args.model, args.heldout, args.out, args.max_tokens, args.max_seq_length, args.seed,
                       args.overwrite, args.mode)
    m, unit = result["measured_on"], UNIT[args.mode]
    print(f"temperature {result['temperature']:.4f}: ECE {m['ece_before']:.4f} -> {m['ece_after']:.4f}, "
          f"NLL {m['nll_before']:.4f} -> {m['nll_after']:.4f} on {m[unit]} held-out {unit} "
          f"(written to {args.model}/calibration.json and {args.out})")


if __name__ == "__main__":
    run_cli(main)
