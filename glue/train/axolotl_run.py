"""Run a command that loads Axolotl or torchao with its known noise dropped from the output, so
the useful lines are what a person sees: `python -m glue.train.axolotl_run axolotl train cfg.yml`.

Dropped are only the lines listed in NOISE, which every Axolotl call (and every .venv stage that
imports transformers, which loads torchao there) printed here before its first useful line and which ask nothing of the user: torch's `_pytree` notes that torchao
registers enums the old way, and torchao's failures to load CUDA-only kernels (mxfp8,
cutlass) on a CPU host; and lm-eval's note, once per task that builds its own dataset (the
tiny profile's world tasks), that such a task could take `--metadata` arguments. Everything else passes through unchanged and at once, progress bars
included (a segment ends at a newline or a carriage return). The exit status is the command's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

NOISE = [
    re.compile(rb"torch/utils/_pytree\.py:\d+\] <enum '\w+'> is an Enum subclass and is now natively supported"),
    re.compile(rb"Failed to load \S*torchao/_C_(mxfp8|cutlass_90a)\S*\.so: Could not load this library"),
    re.compile(rb"^\S*tiny_world_\w+: Custom kwargs can be passed to `--metadata` in console"),
]
_SEGMENT = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n)")


def is_noise(segment: bytes) -> bool:
    return any(pattern.search(segment) for pattern in NOISE)


def filter_stream(read, write) -> None:
    """Copy `read()` chunks to `write`, segment by segment, leaving out noise segments."""
    pending = b""
    while chunk := read():
        pending += chunk
        end = 0
        for match in _SEGMENT.finditer(pending):
            if not is_noise(match.group()):
                write(match.group())
            end = match.end()
        pending = pending[end:]
    if pending and not is_noise(pending):
        write(pending)


def run(cmd: list[str], env: dict | None = None) -> int:
    """Run `cmd` with its stdout and stderr each through the filter (errors stay on stderr, where
    callers and scripts look for them); its exit status."""
    # Unbuffered: a Python child writing to a pipe would otherwise hold its lines back.
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)

    def copy(source, target) -> None:
        def write(data: bytes) -> None:
            target.write(data)
            target.flush()

        filter_stream(lambda: os.read(source.fileno(), 65536), write)

    threads = [threading.Thread(target=copy, args=pair, daemon=True)
               for pair in ((process.stdout, sys.stdout.buffer), (process.stderr, sys.stderr.buffer))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return process.wait()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        raise SystemExit(0 if argv else 2)
    raise SystemExit(run(argv))


if __name__ == "__main__":
    main()
