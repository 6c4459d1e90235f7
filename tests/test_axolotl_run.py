"""Axolotl's known noise is dropped from what make shows; everything else passes at once."""

import sys

from glue.train.axolotl_run import filter_stream, run

PYTREE = (b"W1203 08:45:41.926000 6564 .venv/lib/python3.11/site-packages/torch/utils/_pytree.py:630] "
          b"<enum 'KernelPreference'> is an Enum subclass and is now natively supported by torch.compile as an "
          b"opaque value type. Calling register_constant() on Enum subclasses is deprecated and will be an error.\n")
TORCHAO = (b"[2026-12-03 08:46:04,001] [WARNING] [torchao] Failed to load /w/.venv/lib/python3.11/site-packages/"
           b"torchao/_C_mxfp8.cpython-310-x86_64-linux-gnu.so: Could not load this library: libcudart.so.12\n")
USEFUL = b"[2026-12-03 08:48:25,981] [INFO] [axolotl.train] Training completed!\n"
OTHER_WARNING = b"W1203 08:45:41 torch/utils/_pytree.py:630] something else entirely\n"
LM_EVAL = (b"tiny_world_math: Custom kwargs can be passed to `--metadata` in console (as json string) or to the "
           b"TaskManager.\n")


def filtered(data: bytes, chunk: int) -> bytes:
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    out = []
    filter_stream(lambda: pieces.pop(0) if pieces else b"", out.append)
    return b"".join(out)


def test_known_noise_goes_and_the_rest_stays_in_any_chunking():
    progress = b"\r 10%|#         | 1/10\r 20%|##        | 2/10"
    data = PYTREE + USEFUL + TORCHAO + LM_EVAL + OTHER_WARNING + progress
    for chunk in (1, 7, 64, len(data)):
        assert filtered(data, chunk) == USEFUL + OTHER_WARNING + progress


def test_progress_segments_are_written_as_they_end():
    out = []
    chunks = [b"\r 10%|#", b"  | 1/10\r", b" 20%"]
    filter_stream(lambda: chunks.pop(0) if chunks else b"", out.append)
    assert out == [b"\r", b" 10%|#  | 1/10\r", b" 20%"]


def test_run_keeps_the_exit_status_and_filters_both_streams_each_to_its_own(capfdbinary):
    error = b"error: the config says no\n"
    script = (f"import sys; sys.stderr.buffer.write({PYTREE!r}); sys.stdout.buffer.write({USEFUL!r}); "
              f"sys.stderr.buffer.write({TORCHAO!r}); sys.stderr.buffer.write({error!r}); sys.exit(3)")
    assert run([sys.executable, "-c", script]) == 3
    captured = capfdbinary.readouterr()
    assert captured.out == USEFUL and captured.err == error
