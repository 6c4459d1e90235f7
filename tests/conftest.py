"""Shared fixtures for both test runs: `.venv` runs tests/ (without tests/compress), and
`.venv-compress` runs tests/compress/. Tests run offline: the hub is switched off before
anything imports transformers.

Tiers: a test that uses a fixture which builds or runs a model (MODEL_FIXTURES, and any
fixture that depends on one) is marked `model` at collection, so `make test-fast`
(`-m "not model and not slow"`) needs no model and no llama.cpp build; `slow` marks the
end-to-end runs that call make targets. `make test` runs everything."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ[var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SFT_DIR = ROOT / "tests" / "fixtures" / "sft"
TRAIN_PYTHON = ROOT / ".venv" / "bin" / "python"

# Fixtures that build or load a model; a test using one (directly or through another
# fixture) is in the `model` tier.
MODEL_FIXTURES = {"tiny_base", "compressed"}

# The `openai_stub` fixture: a local OpenAI-compatible server with fault injection.
pytest_plugins = ["tests.openai_stub"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs of make targets on the tiny profile")
    config.addinivalue_line("markers", "model: needs a model built or run (set from the test's fixtures)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)


# The same per-machine cache as `make tiny-model`: the pretrained base is built once.
TINY_CACHE = Path(os.environ.get("TINY_CACHE", Path.home() / ".cache" / "cogumi" / "tiny-base"))


def build_tiny_base(out: Path) -> Path:
    """The tiny profile's base model, built by the training environment (its chat template is
    Axolotl's): in this process when that is the running environment, else in a subprocess
    whose output is shown if it fails."""
    if Path(sys.prefix).resolve() == (ROOT / ".venv").resolve():
        from glue.train.tiny_model import build_tiny_model

        build_tiny_model(out, SFT_DIR / "train.jsonl", cache=TINY_CACHE)
        return out
    if not TRAIN_PYTHON.exists():
        pytest.fail(f"{TRAIN_PYTHON} is missing: the tiny model is built by the training environment; run `make setup`")
    result = subprocess.run([str(TRAIN_PYTHON), "-m", "glue.train.tiny_model", "--out", str(out),
                             "--corpus", str(SFT_DIR / "train.jsonl"), "--cache", str(TINY_CACHE)],
                            cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building the tiny model failed (exit {result.returncode}):\n{result.stdout[-3000:]}\n"
                    f"{result.stderr[-3000:]}")
    return out


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """The tiny profile's base model (pretrained on the generated world), built once per machine."""
    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "base_model")


@pytest.fixture
def tiny_config(tmp_path):
    """Make a copy of the rendered tiny 1A config, test-sized, pointed at a test base model, the bundled
    instruction set and folders under tmp_path: `tiny_config(base, output_dir, edit) -> Path`."""
    import yaml

    source = ROOT / "axolotl_configs/tiny/1a_base_sft.yml"

    def make(base, output_dir, edit=lambda text: text):
        text = source.read_text()
        cfg = yaml.safe_load(text)
        for key, value in (("base_model", base), ("output_dir", output_dir),
                           ("dataset_prepared_path", tmp_path / "prepared")):
            text = text.replace(f"{key}: {cfg[key]}", f"{key}: {value}")
        for key, split in (("datasets", "train"), ("test_datasets", "val")):
            text = text.replace(f"path: {cfg[key][0]['path']}", f"path: {SFT_DIR / split}.jsonl")
        # a test-sized run: 10 steps, a checkpoint every 5, every loss logged
        for key, value in (("max_steps", 10), ("save_steps", 5), ("eval_steps", 5), ("logging_steps", 1)):
            text = re.sub(rf"^{key}: \S+", f"{key}: {value}", text, flags=re.MULTILINE)
        path = tmp_path / "cfg.yml"
        path.write_text(edit(text))
        return path

    return make
