"""Benchmark the curate stage's costly steps on a synthetic corpus (`make bench-data`).

The corpus: rows of English-like text (function words in natural proportion, Zipf-distributed
content words, some code blocks and formulas) with log-normal lengths (mean ~3,000 characters,
like instruction data), and a known share of planted near-duplicate pairs made by replacing
words of a row until the pair's exact Jaccard (3-word shingles) falls in a target band.

Prints rows/s for scoring (tokenizer + features; as in the stage, rows over the real profile's
sequence_len are counted and not judged), the tokenizer alone, language identification (each
backend) and dedup (MinHash on all workers + LSH + exact verification), and dedup recall
against exact Jaccard on the planted pairs, by Jaccard band, and the precision of LSH
candidates before and of removals after exact verification.

With --whole-stage it runs all of `make data` instead, on the corpus written as the seven
sources' files, and prints the stage's own counts and seconds per step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import tempfile
import time
from pathlib import Path

import yaml

from glue.core.io import load_yaml, run_cli
from glue.core.paths import load_profile
from glue.data.curate import CONFIG as CURATE_CONFIG
from glue.data.curate import curate
from glue.data.dedup import DedupParams, deduplicate, jaccard, shingles
from glue.data.quality import COMMON_ENGLISH, LanguageId, compute_features, prose

BANDS = ((0.70, 0.80), (0.80, 0.85), (0.85, 0.90), (0.90, 0.95), (0.95, 1.01))
CODE = "```python\ndef total(items):\n    return sum(item.price * item.count for item in items)\n```"


def _sentence(rng: random.Random, function_words: list[str], content: list[str], cum_weights: list[float]) -> str:
    n = rng.randint(8, 24)
    picks = rng.choices(content, cum_weights=cum_weights, k=n)
    words = [rng.choice(function_words) if rng.random() < 0.45 else picks[i] for i in range(n)]
    return " ".join(words).capitalize() + "."


def synthetic_corpus(rows: int, dup_share: float, seed: int) -> tuple[list[str], list[tuple[int, int]]]:
    """Texts, and the planted (original, near-copy) index pairs."""
    rng = random.Random(seed)
    syllables = ["ka", "to", "ri", "men", "sel", "dor", "ap", "lin", "vex", "or", "tu", "gra", "ston", "pel", "iv"]
    content = sorted({"".join(rng.choices(syllables, k=rng.randint(2, 4))) for _ in range(30000)})
    cum_weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(content))))  # Zipf
    function_words = sorted(COMMON_ENGLISH)
    n_pairs = int(rows * dup_share / 2)
    texts = []
    for _ in range(rows - n_pairs):
        target = rng.lognormvariate(math.log(3000) - 0.32, 0.8)  # mean exp(mu + sigma^2/2) = 3,000
        parts = []
        while sum(len(p) + 1 for p in parts) < target:
            r = rng.random()
            parts.append(CODE if r < 0.01 else f"$x^2 + {rng.randint(2, 99)}x = {rng.randint(1, 999)}$" if r < 0.02
                         else _sentence(rng, function_words, content, cum_weights))
        texts.append(" ".join(parts))
    pairs = []
    for k, original in enumerate(rng.sample(range(rows - n_pairs), n_pairs)):
        low, high = BANDS[k % len(BANDS)]
        words = texts[original].split(" ")
        # replacing w scattered words breaks ~3w of ~n shingles: Jaccard ~ (n - 3w) / (n + 3w)
        want = rng.uniform(low, min(high, 1.0))
        changes = max(1, round(len(words) * (1 - want) / (3 * (1 + want))))
        for position in rng.sample(range(len(words)), min(changes, len(words))):
            words[position] = f"edit{rng.randrange(10**6)}"
        texts.append(" ".join(words))
        pairs.append((original, len(texts) - 1))
    return texts, pairs


# Roughly the rows each source contributes to the real profile's selection, in thousands (the
# `filter` sources at their caps in templates/data/sources.yml), and how a (prompt, answer) pair
# is written in that source's own schema, so the whole stage reads what it reads in production.
SOURCE_MIX = {"openorca": 350, "alpaca_gpt4": 37, "wizardlm": 134, "dolly": 8, "metamathqa": 80,
              "codealpaca": 6, "anthropic_hh": 60}
SCHEMA_WRITERS = {
    "openorca": lambda q, a: {"system_prompt": "You are a helpful assistant.", "question": q, "response": a},
    "alpaca": lambda q, a: {"instruction": q, "input": "", "output": a},
    "sharegpt": lambda q, a: {"conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]},
    "dolly": lambda q, a: {"instruction": q, "context": "", "response": a, "category": "open_qa"},
    "metamath": lambda q, a: {"query": q, "response": a, "type": "MATH_AnsAug"},
    "hh_dialogue": lambda q, a: {"chosen": f"\n\nHuman: {q}\n\nAssistant: {a}"},
}


def whole_stage(rows: int, tokenizer: str, workers: int, seed: int, folder: Path) -> dict:
    """`make data` itself (the real profile's thresholds and sequence_len, the bench's tokenizer)
    on the synthetic corpus written as the seven sources' files, timed from start to the renamed
    output folder."""
    texts, _ = synthetic_corpus(rows, 0.10, seed)
    random.Random(seed).shuffle(texts)  # the planted near-copies land in every source
    config = load_yaml(CURATE_CONFIG)
    config["profiles"]["real"] = {"load": "fixture", "fixture_dir": str(folder / "sources"),
                                  "val_fraction": 0.02, "workers": workers}
    (folder / "sources").mkdir(parents=True)
    total = sum(SOURCE_MIX.values())
    bounds = list(itertools.accumulate(round(rows * n / total) for n in SOURCE_MIX.values()))
    start = 0
    for (name, _), stop in zip(SOURCE_MIX.items(), bounds[:-1] + [rows]):
        write = SCHEMA_WRITERS[config["sources"][name]["adapter"]]
        with open(folder / "sources" / f"{name}.jsonl", "w") as f:
            for i in range(start, stop):
                f.write(json.dumps(write(f"Explain point {i} of the following notes.", texts[i])) + "\n")
        start = stop
    with open(folder / "sources.yml", "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    tick = time.time()
    figures = curate("real", folder / "data", folder / "sources.yml", tokenizer=tokenizer, progress=True)
    seconds = time.time() - tick
    return {"rows": rows, "workers": workers, "kept": figures["rows_kept"], "rejected": figures["rejected"],
            "seconds_by_step": figures["seconds"], "seconds_total": round(seconds, 1),
            "rows_per_s": _rate(rows, seconds)}


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 1) if seconds > 0 else float("inf")


def bench(rows: int, tokenizer: str, workers: int, seed: int, langdetect_rows: int) -> dict:
    texts, pairs = synthetic_corpus(rows, 0.10, seed)
    results: dict = {"rows": len(texts), "workers": workers,
                     "mean_chars": round(sum(map(len, texts)) / len(texts))}

    messages = [[{"role": "user", "content": "Explain the following."}, {"role": "assistant", "content": t}]
                for t in texts]
    language = {"backend": "fasttext", "max_chars": 2000, "min_prose_chars": 40}
    tick = time.time()
    compute_features(messages, tokenizer, language, int(load_profile("real")["sequence_len"]), workers)
    results["score_rows_per_s"] = _rate(len(texts), time.time() - tick)

    # The part of scoring no Python change can speed up: the profile's tokenizer on the chat template.
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    sample = messages[: min(len(messages), 5000)]
    tick = time.time()
    templated = [tok.apply_chat_template(m, tokenize=False) for m in sample]
    tok.backend_tokenizer.encode_batch_fast(templated, add_special_tokens=False)
    results["tokenizer_rows_per_s_all_threads"] = _rate(len(sample), time.time() - tick)

    for backend, n in (("fasttext", len(texts)), ("langdetect", min(langdetect_rows, len(texts)))):
        identifier = LanguageId(backend, max_chars=2000)
        tick = time.time()
        english = [identifier.english(prose(t)) for t in texts[:n]]
        results[f"language_{backend}_rows_per_s_one_core"] = _rate(n, time.time() - tick)
        results[f"language_{backend}_share_english"] = round(sum(p >= 0.2 for p in english) / n, 4)

    params = DedupParams()
    tick = time.time()
    result = deduplicate(texts, range(len(texts)), params, workers)
    seconds = time.time() - tick
    results["dedup_rows_per_s"] = _rate(len(texts), seconds)
    results["dedup_candidate_pairs"] = result.candidate_pairs
    results["dedup_removed"] = len(result.removed)

    found = {frozenset((i, keeper)) for i, (keeper, _) in result.removed.items()}
    by_band = {}
    for low, high in BANDS:
        truth = [(a, b) for a, b in pairs
                 if low <= jaccard(shingles(texts[a], params.ngram), shingles(texts[b], params.ngram)) < high]
        hits = sum(frozenset(p) in found for p in truth)
        by_band[f"{low:.2f}-{min(high, 1.0):.2f}"] = {"pairs": len(truth), "found": hits,
                                                      "recall": round(hits / len(truth), 4) if truth else None}
    at_085 = [v for k, v in by_band.items() if float(k.split("-")[0]) >= 0.85]
    total = sum(v["pairs"] for v in at_085)
    results["recall_jaccard_ge_0.85"] = round(sum(v["found"] for v in at_085) / total, 4) if total else None
    results["recall_by_jaccard"] = by_band
    removed_true = sum(jaccard(shingles(texts[i], params.ngram), shingles(texts[k], params.ngram)) >= params.threshold
                       for i, (k, _) in result.removed.items())
    results["precision_removed"] = round(removed_true / len(result.removed), 4) if result.removed else None
    results["precision_lsh_candidates"] = (round(len(result.removed) / result.candidate_pairs, 4)
                                           if result.candidate_pairs else None)
    return results


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.data.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000, help="rows in the synthetic corpus")
    parser.add_argument("--tokenizer", default="work/tiny/base_model", help="tokenizer for the length feature")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--langdetect-rows", type=int, default=2000, help="rows timed with the slow langdetect backend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--whole-stage", action="store_true",
                        help="instead: run the whole curate stage on --rows synthetic rows in the seven sources' files")
    args = parser.parse_args(argv)
    if args.whole_stage:
        with tempfile.TemporaryDirectory(prefix="bench-data-") as folder:
            results = whole_stage(args.rows, args.tokenizer, args.workers, args.seed, Path(folder))
    else:
        results = bench(args.rows, args.tokenizer, args.workers, args.seed, args.langdetect_rows)
    for key, value in results.items():
        print(f"{key:46s} {json.dumps(value)}")


if __name__ == "__main__":
    run_cli(main)
