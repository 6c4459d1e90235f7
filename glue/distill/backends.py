"""Phase 1C's teacher and judge, one interface online and offline (eval_configs/endpoints.yml,
per profile): `llm` calls the model through glue/core/llm_client.py; offline, the teacher
`solver` answers prompts of the tiny profile's generated world exactly and writes new examples
of a failing cell (glue/core/tiny_world.py), the teacher `reference` answers from the failures'
reference answers (both skip prompts they cannot answer), and the judge `rules` checks a world
prompt with its solver, else scores against the reference (numeric final answer for math,
embedding similarity otherwise). `model` is what a job's key names, so a different model is
asked again.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import AsyncIterator

from glue.core import tiny_world
from glue.core.answers import final_number, same_answer
from glue.core.embeddings import load_embedder, similarities
from glue.core.io import UserError
from glue.core.llm_client import ChatResult, LLMClient, endpoint_settings
from glue.distill.jobs import Job


class ApiBackend:
    """A teacher or judge model behind any OpenAI-compatible endpoint."""

    def __init__(self, client: LLMClient):
        self.client, self.model, self.name = client, client.model, f"llm:{client.model}"

    def cost(self, result: ChatResult) -> float | None:
        return self.client.cost_of(result)

    async def run(self, jobs: list[Job]) -> AsyncIterator[tuple[Job, ChatResult]]:
        # Jobs of different clusters can make the very same request (one judge prompt for two
        # identical examples): it is sent once, and the others take its answer free, as from the cache.
        same: dict[str, list[Job]] = defaultdict(list)
        for job in jobs:
            same[json.dumps([job.params, job.messages], sort_keys=True)].append(job)
        by_params: dict[str, list[list[Job]]] = defaultdict(list)
        for group in same.values():
            by_params[json.dumps(group[0].params, sort_keys=True)].append(group)
        for groups in by_params.values():
            async for index, result in self.client.iter_chat([g[0].messages for g in groups], groups[0][0].params):
                first, *others = groups[index]
                yield first, result
                for job in others:
                    yield job, dataclasses.replace(result, cached=True)


class ReferenceTeacher:
    """Offline teacher: answers from the data's reference answers; says so for anything else."""

    name = model = "reference"

    def cost(self, result: ChatResult) -> float:
        return 0.0

    def answer(self, job: Job) -> ChatResult:
        reference = job.meta.get("reference") or ""
        if job.kind in ("answer", "consistency") and reference:
            return ChatResult(job.key, reference)
        if job.kind == "critique" and reference:
            critique = job.meta.get("reason") or "The draft does not reach the correct answer."
            return ChatResult(job.key, json.dumps({"critique": critique, "revised": reference}))
        return ChatResult(job.key, None, "skipped: the reference teacher has no reference answer for this prompt")

    async def run(self, jobs: list[Job]) -> AsyncIterator[tuple[Job, ChatResult]]:
        for job in jobs:
            yield job, self.answer(job)


class SolverTeacher(ReferenceTeacher):
    """Offline teacher for the tiny profile's generated world: a real solver, not stored answers.
    A new example is a fresh task of the family most of the cluster's examples belong to, drawn
    from the training split with a seed taken from the job, so reruns write the same one. Like a
    teacher asked for "a different request of the same kind", it varies the difficulty: even
    example numbers are of the cluster's own cell, odd ones of the family's other cell, so that
    learning a failing cell (a carry) does not unlearn its sibling (plain addition)."""

    name = model = "solver"

    def answer(self, job: Job) -> ChatResult:
        if job.kind == "new":
            labels = Counter(filter(None, map(tiny_world.label, job.meta.get("examples") or [])))
            if not labels:
                return ChatResult(job.key, None, "skipped: the cluster has no prompt of the generated world")
            family, variant = labels.most_common(1)[0][0].split("/")
            hard = (variant == "hard") == (job.meta.get("index", 0) % 2 == 0)
            for task in tiny_world.generate(50, int(job.key[:8], 16), families=[family], hard_share=float(hard)):
                if task.hard == hard:
                    return ChatResult(job.key, json.dumps({"instruction": task.prompt, "response": task.answer}))
            return ChatResult(job.key, None, f"skipped: no new {family} task found")
        solved = tiny_world.solve(job.meta.get("prompt") or "")
        if solved is None:
            return super().answer(job)
        return super().answer(dataclasses.replace(job, meta={**job.meta, "reference": solved}))


class RulesJudge:
    """Offline judge: a 1-10 score from agreement with the reference (numeric final answer for
    math, embedding similarity otherwise). It checks agreement, not quality, and says so."""

    name = model = "rules"

    def __init__(self, embedding_model: str):
        self.embedding_model = embedding_model
        self._embedder = None

    def cost(self, result: ChatResult) -> float:
        return 0.0

    def score(self, job: Job) -> tuple[int, str] | None:
        response, reference = job.meta["response"], job.meta.get("reference") or ""
        solved = tiny_world.check(job.meta.get("instruction") or "", response)
        if solved is not None:
            return (10, "the solver's answer") if solved else (1, "differs from the solver's answer")
        if not reference:
            return None
        expected = final_number(reference)
        if job.domain == "math" and expected is not None:
            return (10, "final answer matches the reference") if same_answer("math", response, reference) else (
                1, f"final answer {final_number(response)} differs from the reference's {expected}")
        if self._embedder is None:
            self._embedder = load_embedder(self.embedding_model)
        similarity = similarities(self._embedder, [response], [reference])[0]
        return max(1, min(10, round(1 + 9 * similarity))), f"similarity to the reference {similarity:.2f}"

    async def run(self, jobs: list[Job]) -> AsyncIterator[tuple[Job, ChatResult]]:
        for job in jobs:
            scored = self.score(job)
            if scored is None:
                yield job, ChatResult(job.key, None, "skipped: the rules judge needs a reference answer")
            else:
                yield job, ChatResult(job.key, json.dumps({"score": scored[0], "reason": scored[1]}))


def make_backend(role: str, profile: str, cache_dir: Path | None, config: dict):
    backend = endpoint_settings(role, profile=profile).get("backend", "llm")
    if backend == "llm":
        return ApiBackend(LLMClient.for_role(role, profile, cache_dir=cache_dir))
    if role == "teacher" and backend == "reference":
        return ReferenceTeacher()
    if role == "teacher" and backend == "solver":
        return SolverTeacher()
    if role == "judge" and backend == "rules":
        return RulesJudge(config["rules_judge_embedding_model"])
    raise UserError(f"eval_configs/endpoints.yml: backend {backend!r} is not available for the {role}")
