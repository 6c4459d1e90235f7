"""The layout's rules, read from the imports (AST) of every module under glue/:

- glue.core imports no phase package; a phase imports glue.core and itself, nothing of another
  phase except the ALLOWED edges below, each with its reason.
- Every module runs in one environment or both: a phase package has one (ENVIRONMENTS), a core
  module runs wherever a module that imports it runs. A module may import a third-party package
  only if every environment it runs in has it (read from the venvs themselves).
- Tests follow the same split: tests/compress runs in .venv-compress, the rest in .venv.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GLUE = ROOT / "glue"
VENVS = {"train": ROOT / ".venv", "compress": ROOT / ".venv-compress"}
# Importable without being installed: llama.cpp's converter and its own gguf-py, unpacked from the
# llama-cpp-python sdist by `make setup` (glue/compress/gguf.py puts them on sys.path).
SOURCE_TREES = {"compress": [ROOT / ".venv-compress/src/llama.cpp", ROOT / ".venv-compress/src/llama.cpp/gguf-py"]}
ENVIRONMENTS = {"data": {"train"}, "train": {"train"}, "eval": {"train"}, "distill": {"train"},
                "compress": {"compress"}, "modifiers": {"train"}}
RUNS_IN_BOTH = {
    "glue.eval.evaluate": "make eval-1a scores merged checkpoints in .venv; make eval-compressed scores "
                          "compressed-tensors checkpoints and GGUF files, which only .venv-compress can load",
}
# A module that runs in one environment other than its phase's.
RUNS_ONLY_IN = {
    "glue.modifiers.gguf_adapter": ("compress", "llama.cpp's runtime and LoRA converter are installed in .venv-compress only"),
}
ALLOWED = {
    ("glue.distill.build", "glue.data.dedup"):
        "1C's mix removes near-duplicates of the curated set with Phase 0's own dedup, so both stages "
        "call the same rows duplicates",
    ("glue.eval.evaluate", "glue.compress.gguf"):
        "a suite scores a GGUF file through the lm-eval model that sits beside the GGUF export; imported "
        "inside the GGUF branch, which runs only in .venv-compress",
    # Phase 3 reruns 1B and 1C on one domain's rows: their own code, so the same judge, clusters,
    # teacher, budget and resume rules, not a second copy that drifts.
    ("glue.modifiers.data", "glue.eval.failures"): "1B's judge, run on a domain's rows",
    ("glue.modifiers.data", "glue.eval.cluster"): "1B's clusters of those failures",
    ("glue.modifiers.data", "glue.distill.build"): "1C's teacher examples for those clusters",
    ("glue.modifiers.data", "glue.distill.jobs"): "1C's budget stop, reported as `make distill-1c` reports it",
    ("glue.modifiers.gguf_adapter", "glue.compress.gguf"):
        "the GGUF adapters are checked over `make gguf`'s base files, loaded and compared as `make gguf` checks them",
    ("glue.modifiers.report", "glue.eval.evaluate"):
        "the domain's tasks run as `make eval` runs a suite (one lm-eval call, one results layout), with the "
        "modifier given to lm-eval as peft=",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, at top level or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            if node.module == "glue" or node.module.count(".") == 1 and node.module.startswith("glue."):
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


MODULES = {module_name(p): imports_of(p) for p in sorted(GLUE.rglob("*.py"))}


def phase(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "glue" else None


def glue_imports(module: str) -> set[str]:
    return {name for name in MODULES[module] if name in MODULES and phase(name)}


def test_every_module_sits_in_core_or_a_phase():
    loose = [m for m in MODULES if m != "glue" and phase(m) not in {"core", *ENVIRONMENTS}]
    assert not loose, f"modules outside glue/core and the phase packages {sorted(ENVIRONMENTS)}: {loose}"


def test_core_imports_no_phase():
    bad = [(m, i) for m in MODULES if phase(m) == "core" for i in glue_imports(m) if phase(i) != "core"]
    assert not bad, f"glue.core must not import a phase package (move the shared need into core): {bad}"


def test_a_phase_imports_only_core_and_itself():
    bad = [(m, i) for m in MODULES if phase(m) in ENVIRONMENTS for i in glue_imports(m)
           if phase(i) not in ("core", phase(m)) and (m, i) not in ALLOWED]
    assert not bad, f"cross-phase imports (move the shared need into glue.core, or allow-list with a reason): {bad}"


def test_allow_list_entries_are_still_needed():
    stale = [edge for edge in ALLOWED if edge[1] not in glue_imports(edge[0])]
    assert not stale, f"allow-list entries no import needs any more: {stale}"


def environments() -> dict[str, set[str]]:
    """The environments each module runs in: its phase's, and for core, its importers'."""
    envs = {m: set(VENVS) if m in RUNS_IN_BOTH else {RUNS_ONLY_IN[m][0]} if m in RUNS_ONLY_IN
            else set(ENVIRONMENTS.get(phase(m), ())) for m in MODULES}
    changed = True
    while changed:  # core modules inherit their importers' environments, through core too
        changed = False
        for m in MODULES:
            for i in glue_imports(m):
                if phase(i) == "core" and (m, i) not in ALLOWED and not envs[m] <= envs[i]:
                    envs[i] |= envs[m]
                    changed = True
    return {m: e or set(VENVS) for m, e in envs.items()}


@pytest.fixture(scope="module")
def installed() -> dict[str, set[str]]:
    """The top-level importable names of each environment, asked of its own interpreter."""
    found = {}
    for env, venv in VENVS.items():
        python = venv / "bin" / "python"
        if not python.exists():
            pytest.fail(f"{python} is missing: run `make setup` (this test reads both environments)")
        trees = [str(path) for path in SOURCE_TREES.get(env, [])]
        out = subprocess.run([str(python), "-c", "import json, pkgutil, sys; print(json.dumps([m.name for m in ["
                              "*pkgutil.iter_modules(), *pkgutil.iter_modules(sys.argv[1:])]]))", *trees],
                             capture_output=True, text=True, check=True).stdout
        found[env] = set(json.loads(out))
    return found


def third_party(module: str) -> set[str]:
    tops = {name.split(".")[0] for name in MODULES[module]}
    return {t for t in tops if t != "glue" and t not in sys.stdlib_module_names and t != "__future__"}


def test_each_module_imports_only_what_its_environments_have(installed):
    envs = environments()
    bad = [f"{m} (runs in {', '.join(sorted(envs[m]))}) imports {pkg}, which {env}'s venv lacks"
           for m in MODULES for pkg in sorted(third_party(m)) for env in sorted(envs[m])
           if pkg not in installed[env]]
    assert not bad, "\n".join(bad)


def test_environment_check_would_catch_a_crossing(installed):
    # The check above is only worth something if the two environments differ where it matters.
    assert "llmcompressor" in installed["compress"] and "llmcompressor" not in installed["train"]
    assert "axolotl" in installed["train"] and "axolotl" not in installed["compress"]
    envs = environments()
    assert envs["glue.core.checkpoints"] == {"train", "compress"}  # eval.failures and compress.compress use it
    assert envs["glue.core.embeddings"] == {"train"}  # only .venv has sentence-transformers, and only it uses it


def test_tests_import_only_their_environments_modules():
    envs = environments()
    bad = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        env = "compress" if "compress" in path.relative_to(ROOT / "tests").parts[:-1] else "train"
        for name in imports_of(path):
            if name in MODULES and env not in envs[name]:
                bad.append(f"{path.relative_to(ROOT)} ({env}) imports {name} (runs in {sorted(envs[name])})")
    assert not bad, "\n".join(bad)
