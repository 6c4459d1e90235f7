"""Near-duplicate removal with datasketch MinHash LSH, verified by exact Jaccard.

Texts are normalised (lower case, word characters only) and cut into word n-gram shingles.
MinHash signatures are computed in worker processes. A shingle enters MinHash as a 32-bit
combination of its words' xxh32 hashes rather than a hash of its string: datasketch's affine32
scheme premixes every input with the MurmurHash3 finalizer, so the cheap combination is as good
an input, and it hashes each word once instead of n times. MinHashLSH (bands x rows set
explicitly: datasketch's own choice for 0.8 with 128 permutations, 9 x 13, misses about a
third of the pairs at Jaccard 0.85) proposes candidate pairs, and the exact Jaccard of their
shingle sets decides. So the final decision admits no pair below the threshold; LSH recall
(measured by `python -m glue.data.bench`) bounds what can be missed.

Which row of a duplicate group is kept: rows are visited in the caller's priority order; a
row not yet removed is kept and removes every later row whose verified Jaccard with it is at
or above the threshold. The kept rows thus contain no verified pair, and the same input in the
same order always keeps the same rows.
"""

from __future__ import annotations

import gc
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import xxhash
from datasketch import LeanMinHash, MinHash, MinHashLSH
from tqdm import tqdm

from glue.core.parallel import forked_map

WORD = re.compile(r"\w+")
ASCII_WORD = re.compile(r"\w+", re.ASCII)  # the same on ASCII text, where re runs it faster
SCHEME = "affine32"  # datasketch 2.0's default scheme; stated because LeanMinHash needs it explicitly
CHUNK = 1000
NGRAM_MULTIPLIER = np.uint32(0x9E3779B1)  # odd: the polynomial over word hashes wraps without losing bits


@dataclass(frozen=True)
class DedupParams:
    num_perm: int = 128
    ngram: int = 3
    threshold: float = 0.8
    bands: int = 16
    rows: int = 8
    seed: int = 1

    def __post_init__(self):
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands x rows ({self.bands} x {self.rows}) exceeds num_perm {self.num_perm}")


@dataclass
class DedupResult:
    removed: dict[int, tuple[int, float]] = field(default_factory=dict)  # index -> (kept index, Jaccard)
    candidate_pairs: int = 0  # pairs LSH proposed and exact Jaccard checked


def words(text: str) -> list[str]:
    lowered = text.lower()
    return (ASCII_WORD if lowered.isascii() else WORD).findall(lowered)


def shingles(text: str, n: int) -> set[bytes]:
    found = words(text)
    if len(found) < n:
        return {" ".join(found).encode()}
    return set(map(str.encode, map(" ".join, zip(*(found[i:] for i in range(n))))))


def shingle_hashes(text: str, n: int) -> list[int]:
    """One 32-bit value per word n-gram of `text` (per element of `shingles(text, n)`, up to
    hash collisions): the n words' xxh32 hashes combined as a polynomial, wrapping at 2**32."""
    found = words(text)
    if len(found) < n:
        return [xxhash.xxh32_intdigest(" ".join(found).encode())]
    word_hashes = np.fromiter(map(xxhash.xxh32_intdigest, map(str.encode, found)), np.uint32, len(found))
    count = len(found) - n + 1
    combined = word_hashes[:count].copy()
    for i in range(1, n):
        combined *= NGRAM_MULTIPLIER
        combined += word_hashes[i:i + count]
    return combined.tolist()


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def signatures(texts: Sequence[str], params: DedupParams) -> np.ndarray:
    """The MinHash hash values of `texts`, one row each."""
    minhashes = MinHash.bulk((shingle_hashes(t, params.ngram) for t in texts), num_perm=params.num_perm,
                             seed=params.seed, hashfunc=int, scheme=SCHEME)
    return np.stack([m.hashvalues for m in minhashes])


_WORKER: dict = {}


def _init_worker(texts: Sequence[str], params: DedupParams) -> None:
    _WORKER.update(texts=texts, params=params)


def _worker_span(span: tuple[int, int]) -> np.ndarray:
    return signatures(_WORKER["texts"][span[0]:span[1]], _WORKER["params"])


def _signature_parts(texts: Sequence[str], params: DedupParams, workers: int) -> Iterator[np.ndarray]:
    """MinHash hash values of `texts` in order, CHUNK rows at a time, computed on `workers` processes."""
    spans = [(i, min(i + CHUNK, len(texts))) for i in range(0, len(texts), CHUNK)]
    yield from forked_map(_worker_span, spans, workers, _init_worker, (texts, params))


def build_lsh(texts: Sequence[str], params: DedupParams, workers: int, progress: bool = True) -> MinHashLSH:
    """The LSH index of `texts`, keyed by their indices.

    The index is filled while the workers hash the next chunks: inserting is single-threaded
    Python in datasketch, and overlapping it with hashing hides most of its time (`make bench-data`
    prints the rate).
    """
    lsh = MinHashLSH(threshold=params.threshold, num_perm=params.num_perm, params=(params.bands, params.rows))
    index = 0
    with tqdm(total=len(texts), desc="minhash+index", unit="row", disable=not progress) as bar, \
            lsh.insertion_session() as session:
        for part in _signature_parts(texts, params, workers):
            for hashvalues in part:
                session.insert(index, LeanMinHash(seed=params.seed, hashvalues=hashvalues, scheme=SCHEME),
                               check_duplication=False)
                index += 1
            bar.update(len(part))
    return lsh


def candidates(lsh: MinHashLSH) -> dict[int, set[int]]:
    """For every key that shares a band bucket with another, the keys it shares one with (itself
    included): what `lsh.query` returns for it, read from the index's own bucket tables instead of
    hashing all 640K signatures a second time to ask for mostly empty answers."""
    neighbours: dict[int, set[int]] = {}
    for table in lsh.hashtables:
        for bucket in table.keys():
            members = table.get(bucket)
            if len(members) > 1:
                for key in members:
                    neighbours.setdefault(key, set()).update(members)
    return neighbours


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """The index and its candidate sets are millions of small containers and no reference cycles:
    the cyclic collector would re-walk the growing heap again and again (11% of the time with
    1.5M rows loaded, on top of curate's gc.freeze())."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def deduplicate(texts: Sequence[str], priority: Sequence[int], params: DedupParams, workers: int,
                progress: bool = True) -> DedupResult:
    """Indices of `texts` to remove as near-duplicates, each with the index it duplicates."""
    with _cyclic_gc_paused():
        neighbours = candidates(build_lsh(texts, params, workers, progress))
    rank = {index: r for r, index in enumerate(priority)}
    result = DedupResult()
    for index in tqdm(priority, desc="dedup", unit="row", disable=not progress):
        if index in result.removed or index not in neighbours:
            continue
        later = [j for j in neighbours[index] if rank[j] > rank[index] and j not in result.removed]
        if not later:
            continue
        mine = shingles(texts[index], params.ngram)
        for j in sorted(later, key=rank.__getitem__):
            result.candidate_pairs += 1
            similarity = jaccard(mine, shingles(texts[j], params.ngram))
            if similarity >= params.threshold:
                result.removed[j] = (index, round(similarity, 4))
    return result
