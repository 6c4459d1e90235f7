"""`make setup` on a CPU host that has no local torch +cpu wheel and no TORCH_INDEX: torch comes
from the PyTorch CPU index, with one line saying so. Run offline against a stand-in index (a
folder in the simple-index layout holding a stand-in torch wheel) through the Makefile's own
`install_torch` recipe."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # makes two virtual environments (~20 s each)

ROOT = Path(__file__).resolve().parent.parent
SPEC = "torch==2.13.0+cpu"
WHEEL = "torch-2.13.0+cpu-py3-none-any.whl"


def stand_in_wheel(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    info = "torch-2.13.0+cpu.dist-info"
    files = {"torch/__init__.py": "", f"{info}/METADATA": "Metadata-Version: 2.1\nName: torch\nVersion: 2.13.0+cpu\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(folder / WHEEL, "w") as wheel:
        for name, text in files.items():
            wheel.writestr(name, text)
    return folder / WHEEL


def install_torch(tmp_path: Path, env: dict) -> tuple[subprocess.CompletedProcess, Path]:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)  # ensurepip: bundled, offline
    python = venv / "bin" / "python"
    result = subprocess.run(["make", "--no-print-directory", "-f", "Makefile",
                             "--eval", f"try-torch: ; $(call install_torch,{python})", "try-torch", "HAS_GPU="],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    return result, python


@pytest.fixture
def offline_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="0", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def test_no_local_wheel_falls_back_to_the_cpu_index_and_says_so(tmp_path, offline_env):
    index = tmp_path / "simple"
    stand_in_wheel(index / "torch")
    (index / "torch" / "index.html").write_text(f'<a href="{WHEEL}">{WHEEL}</a>\n')
    offline_env["PIP_INDEX_URL"] = f"file://{tmp_path}/empty-index"  # pip's own sources: no torch here
    (tmp_path / "empty-index").mkdir()
    result, python = install_torch(tmp_path, {**offline_env, "MAKEFLAGS": f"TORCH_CPU_INDEX=file://{index}"})
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("setup:")]
    assert lines == [f"setup: no local {SPEC} wheel; installing it from the PyTorch CPU index (file://{index})"]
    shown = subprocess.run([str(python), "-m", "pip", "show", "torch"], capture_output=True, text=True).stdout
    assert "Version: 2.13.0+cpu" in shown


def test_a_local_wheel_is_used_without_the_fallback(tmp_path, offline_env):
    wheels = tmp_path / "wheels"
    stand_in_wheel(wheels)
    offline_env.update(PIP_FIND_LINKS=str(wheels), PIP_INDEX_URL=f"file://{tmp_path}/empty-index")
    (tmp_path / "empty-index").mkdir()
    result, python = install_torch(tmp_path, {**offline_env, "MAKEFLAGS": "TORCH_CPU_INDEX=file:///nowhere"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line for line in result.stdout.splitlines() if line.startswith("setup:")] == []
    shown = subprocess.run([str(python), "-m", "pip", "show", "torch"], capture_output=True, text=True).stdout
    assert "Version: 2.13.0+cpu" in shown
