"""Shared fixtures. Tests run offline: the hub is switched off before anything imports
transformers, and the tiny base model is built once per session from the bundled data."""

import os
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

# The `openai_stub` fixture: a local OpenAI-compatible server with fault injection.
pytest_plugins = ["tests.openai_stub"]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs of real tools on the tiny profile (CI runs them)")


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny Llama checkpoint (random weights, offline tokenizer), built once per session."""
    from glue.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "base_model"
    build_tiny_model(out, SFT_DIR / "train.jsonl")
    return out


@pytest.fixture
def tiny_config(tmp_path):
    """Make a copy of the rendered tiny 1A config pointed at a test base model, the bundled
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
        path = tmp_path / "cfg.yml"
        path.write_text(edit(text))
        return path

    return make
