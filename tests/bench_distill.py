"""`make bench-distill`: how many teacher requests per second the 1C generation loop sustains
(client, concurrency bound, call log with fsync) against a local OpenAI-compatible server that
answers each request after a fixed latency. Run: `.venv/bin/python -m tests.bench_distill`."""

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

from glue.core.llm_client import LLMClient
from glue.distill.backends import ApiBackend
from glue.distill.jobs import CallLog, Job, run_jobs
from tests.openai_stub import OpenAIStub


def serve(latency: float, ready, stop) -> None:
    with OpenAIStub(latency=latency) as stub:
        ready.put(stub.base_url)
        stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench_distill", description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before answering")
    args = parser.parse_args()

    ready, stop = multiprocessing.Queue(), multiprocessing.Event()
    server = multiprocessing.Process(target=serve, args=(args.latency, ready, stop), daemon=True)
    server.start()  # its own process: the server must not share the client's interpreter lock
    base_url = ready.get(timeout=30)
    try:
        client = LLMClient("bench-teacher", base_url=base_url, api_key="local", concurrency=args.concurrency)
        jobs = [Job("answer", 0, "conversation", [{"role": "user", "content": f"Request number {i}"}],
                    {"temperature": 0.0, "max_tokens": 64}).keyed(client.model) for i in range(args.requests)]
        config = {"budget": {"usd": None, "tokens": None}}
        with tempfile.TemporaryDirectory() as tmp:
            log = CallLog(Path(tmp) / "calls.jsonl")
            started = time.perf_counter()
            run_jobs(ApiBackend(client), jobs, log, config, "bench")
            seconds = time.perf_counter() - started
            errors = sum(1 for r in log.records.values() if r["error"])
            log.close()
    finally:
        stop.set()
        server.join(timeout=10)
    ceiling = args.concurrency / args.latency
    print(f"{args.requests} requests, concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms: "
          f"{seconds:.2f} s, {args.requests / seconds:.1f} requests/s "
          f"(ceiling {ceiling:.0f}/s), {errors} errors")


if __name__ == "__main__":
    main()
