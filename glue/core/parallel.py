"""Chunked work on forked worker processes, shared by the curate stage's scoring and dedup."""

from __future__ import annotations

from multiprocessing import get_context
from typing import Any, Callable, Iterator, Sequence


def forked_map(work: Callable[[Any], Any], spans: Sequence[Any], workers: int,
               initializer: Callable[..., None], initargs: tuple) -> Iterator[Any]:
    """work(span) for every span, in order. With more than one worker and span, the spans run
    in forked processes set up by initializer(*initargs): forked, they inherit the arguments
    (the stage's whole row list) instead of receiving them through a pipe, so only the spans and
    the results cross. Otherwise the initializer and the work run here."""
    if workers > 1 and len(spans) > 1:
        with get_context("fork").Pool(workers, initializer=initializer, initargs=initargs) as pool:
            yield from pool.imap(work, spans)
    else:
        initializer(*initargs)
        yield from map(work, spans)
