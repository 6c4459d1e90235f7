"""MinHash LSH dedup: planted near-duplicates go, distinct rows stay, same input gives same output."""

import random

from datasketch import LeanMinHash

from glue.data.dedup import (
    SCHEME,
    DedupParams,
    build_lsh,
    candidates,
    deduplicate,
    jaccard,
    shingle_hashes,
    shingles,
    signatures,
)

PARAMS = DedupParams()


def corpus(n_distinct=60, seed=0):
    """Distinct random-word texts, plus near-copies of some of them at known edit rates."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(3000)]
    texts = [" ".join(rng.choice(vocab) for _ in range(120)) for _ in range(n_distinct)]
    planted = {}
    for original in range(0, n_distinct, 6):
        words = texts[original].split()
        words[rng.randrange(len(words))] = "changed"  # one word: Jaccard ~0.95
        planted[len(texts)] = original
        texts.append(" ".join(words))
    exact_case = len(texts)
    texts.append(texts[1].upper().replace(" ", "  "))  # same words after normalisation
    planted[exact_case] = 1
    return texts, planted


def test_planted_duplicates_removed_and_distinct_rows_kept():
    texts, planted = corpus()
    result = deduplicate(texts, range(len(texts)), PARAMS, workers=1, progress=False)
    assert {i: keeper for i, (keeper, _) in result.removed.items()} == planted
    for removed, (keeper, similarity) in result.removed.items():
        assert similarity == round(jaccard(shingles(texts[removed], 3), shingles(texts[keeper], 3)), 4)
        assert similarity >= PARAMS.threshold


def test_the_higher_priority_row_is_kept():
    texts, planted = corpus()
    priority = list(range(len(texts)))[::-1]  # later rows first: now the near-copies are kept
    result = deduplicate(texts, priority, PARAMS, workers=1, progress=False)
    assert {i: keeper for i, (keeper, _) in result.removed.items()} == {o: c for c, o in planted.items()}


def test_pairs_below_the_threshold_are_kept():
    rng = random.Random(2)
    base = [f"t{rng.randrange(10**6)}" for _ in range(200)]
    texts = [" ".join(base)]
    for n_changed in (5, 12):  # Jaccard above the threshold, and below it but likely an LSH candidate
        words = list(base)
        for k in rng.sample(range(200), n_changed):
            words[k] = f"x{k}"
        texts.append(" ".join(words))
    sims = [jaccard(shingles(texts[0], 3), shingles(t, 3)) for t in texts[1:]]
    result = deduplicate(texts, range(3), PARAMS, workers=1, progress=False)
    assert sims[0] >= 0.8 > sims[1] > 0.6
    assert result.candidate_pairs == 2  # LSH proposed both; the exact check kept the second
    assert set(result.removed) == {1}


def test_deterministic_and_the_same_on_two_processes():
    texts, _ = corpus(n_distinct=1500, seed=3)  # more than one chunk, so the pool really runs
    one = deduplicate(texts, range(len(texts)), PARAMS, workers=1, progress=False)
    two = deduplicate(texts, range(len(texts)), PARAMS, workers=2, progress=False)
    assert one.removed == two.removed and len(one.removed) == 251


def test_candidates_are_what_lsh_query_returns():
    texts, _ = corpus()
    lsh = build_lsh(texts, PARAMS, workers=1, progress=False)
    neighbours = candidates(lsh)
    assert len(neighbours) >= 2 * 11, "every planted pair shares a bucket"
    for i, hashvalues in enumerate(signatures(texts, PARAMS)):
        query = lsh.query(LeanMinHash(seed=PARAMS.seed, hashvalues=hashvalues, scheme=SCHEME))
        assert set(query) == neighbours.get(i, {i}), i


def test_one_hash_per_shingle_so_minhash_estimates_the_shingle_jaccard():
    texts, planted = corpus()
    for text in texts + ["Überall ÜBERALL straße, 3 words", "two words", ""]:
        assert len(set(shingle_hashes(text, 3))) == len(shingles(text, 3)), text
    copy, original = next(iter(planted.items()))
    a, b = texts[original], texts[copy]
    estimate = (signatures([a], PARAMS)[0] == signatures([b], PARAMS)[0]).mean()
    assert abs(estimate - jaccard(shingles(a, 3), shingles(b, 3))) < 0.15
    assert (signatures([texts[1]], PARAMS) == signatures([texts[1].upper().replace(" ", "  ")], PARAMS)).all()
