"""Where the repository's files are, and the one way a config takes a profile's overrides."""

from __future__ import annotations

import copy
from pathlib import Path

from glue.core.io import UserError, load_yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
EVAL_CONFIGS = ROOT / "eval_configs"


def relative(path: str | Path) -> str:
    """`path` relative to the repository root when it is inside it (manifests stay valid in a
    clone elsewhere), else as given."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(ROOT))
    except ValueError:
        return str(path)


def profile_names() -> list[str]:
    return sorted(p.stem for p in (TEMPLATES / "profiles").glob("*.yml"))


def load_profile(name: str) -> dict:
    path = TEMPLATES / "profiles" / f"{name}.yml"
    if not path.is_file():
        raise UserError(f"unknown profile {name!r}: no {path.relative_to(ROOT)} "
                        f"(profiles: {', '.join(profile_names())})")
    profile = load_yaml(path)
    if not isinstance(profile, dict):
        raise UserError(f"{path}: expected a mapping of profile values")
    return profile


def overlay(base: dict, override: dict) -> dict:
    """`base` with `override` laid over it: mappings merge key by key, at every depth; any
    other value (a list, a number) replaces the base's."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = overlay(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else copy.deepcopy(value)
    return merged


def profile_config(config: dict, profile: str | None) -> dict:
    """A config file's values for one profile: its `profiles.<profile>` block laid over the rest
    (the `profiles:` block itself dropped). Every stage config with per-profile values uses this."""
    overrides = ((config.get("profiles") or {}).get(profile) or {}) if profile else {}
    return overlay({k: v for k, v in config.items() if k != "profiles"}, overrides)
