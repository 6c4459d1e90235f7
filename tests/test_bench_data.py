"""`make bench-data`: the synthetic corpus is what it claims, and both modes run and report."""

import json

from glue.data.bench import BANDS, bench, synthetic_corpus, whole_stage
from glue.data.dedup import jaccard, shingles


def test_corpus_lengths_and_planted_pairs_fall_in_their_bands():
    texts, pairs = synthetic_corpus(2000, 0.10, seed=1)
    assert len(texts) == 2000 and len(pairs) == 100
    assert 2200 < sum(map(len, texts)) / len(texts) < 3800  # the issue's ~3,000 characters a row
    in_band = 0
    for k, (a, b) in enumerate(pairs):
        low, high = BANDS[k % len(BANDS)]
        in_band += low - 0.03 <= jaccard(shingles(texts[a], 3), shingles(texts[b], 3)) < high + 0.03
    assert in_band >= 0.95 * len(pairs)


def test_bench_reports_rates_recall_and_precision(tiny_base):
    results = bench(600, str(tiny_base), workers=1, seed=0, langdetect_rows=20)
    for key in ("score_rows_per_s", "tokenizer_rows_per_s_all_threads", "language_fasttext_rows_per_s_one_core",
                "dedup_rows_per_s"):
        assert results[key] > 0, key
    assert results["recall_jaccard_ge_0.85"] >= 0.95 and results["precision_removed"] == 1.0
    assert results["recall_by_jaccard"]["0.70-0.80"]["found"] == 0  # nothing below the threshold goes


def test_whole_stage_runs_make_data_on_the_seven_sources_files(tiny_base, tmp_path):
    results = whole_stage(700, str(tiny_base), workers=1, seed=0, folder=tmp_path)
    assert results["rows"] == 700 and 0 < results["kept"] < 700
    assert results["rejected"]["duplicate"] > 0 and results["rejected"]["load"] == 0
    assert set(results["seconds_by_step"]) == {"load", "score", "dedup"}
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    per_source = manifest["figures"]["per_source"]
    assert len(per_source) == 7 and all(counts["read"] > 0 for counts in per_source.values())
    assert sum(counts["read"] for counts in per_source.values()) == 700
