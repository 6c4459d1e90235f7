"""Render every training stage's Axolotl YAML from templates/ into axolotl_configs/<profile>/.

Values come from three places, later ones winning: the profile (templates/profiles/<p>.yml),
the stage (templates/stages.yml, whose strings may use {{ profile values }}), and the
profile's own `stages.<stage>` numbers. Templates use StrictUndefined: a value a template
needs but nobody set is an error naming the template and the value, never an empty string.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

import jinja2
import yaml

from glue.core.io import UserError, load_yaml, run_cli, write_text_atomic
from glue.core.paths import ROOT, TEMPLATES, load_profile, profile_names

OUT = ROOT / "axolotl_configs"


def yaml_scalar(value) -> str:
    """A value as a one-line YAML scalar (quoted where YAML needs quotes)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    env.filters["yaml"] = yaml_scalar
    return env


def load_stages() -> dict:
    return load_yaml(TEMPLATES / "stages.yml")


def _render_string(env: jinja2.Environment, text: str, values: dict, where: str) -> str:
    try:
        return env.from_string(text).render(**values)
    except jinja2.UndefinedError as exc:
        raise UserError(f"{where}: undefined template value: {exc.message}") from None


def stage_values(profile_name: str, stage: str) -> dict:
    """The full set of values the stage's template renders with."""
    env = environment()
    profile = load_profile(profile_name)
    stages = load_stages()
    if stage not in stages:
        raise UserError(f"unknown stage {stage!r} (templates/stages.yml has: {', '.join(stages)})")
    values = {k: v for k, v in profile.items() if k != "stages"}
    for key, value in (stages[stage].get("values") or {}).items():
        if isinstance(value, str):
            value = _render_string(env, value, values, f"templates/stages.yml: {stage}.{key}")
        values[key] = value
    values.update((profile.get("stages") or {}).get(stage) or {})
    values.update(stage=stage, about=stages[stage]["about"])
    return values


def render_stage(profile_name: str, stage: str) -> str:
    env = environment()
    template_name = load_stages()[stage]["template"] if stage in load_stages() else None
    values = stage_values(profile_name, stage)
    try:
        return env.get_template(template_name).render(**values)
    except jinja2.UndefinedError as exc:
        raise UserError(
            f"templates/{template_name}: undefined value when rendering {stage} for profile "
            f"{profile_name}: {exc.message} (set it in templates/profiles/{profile_name}.yml)"
        ) from None


def rendered_path(profile_name: str, stage: str, out_root: Path = OUT) -> Path:
    return out_root / profile_name / f"{stage}.yml"


def render_all(profiles: list[str], out_root: Path = OUT, check: bool = False) -> list[str]:
    """Render every stage for `profiles`. With `check`, write nothing and return a diff for
    each file that differs from a fresh render (an empty list means up to date)."""
    problems = []
    for profile_name in profiles:
        for stage in load_stages():
            text = render_stage(profile_name, stage)
            target = rendered_path(profile_name, stage, out_root)
            if check:
                current = target.read_text(encoding="utf-8") if target.exists() else ""
                if current != text:
                    diff = difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                str(target), "fresh render")
                    problems.append("".join(diff) or f"{target}: missing")
            else:
                write_text_atomic(target, text)
    return problems


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.train.render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", action="append", help="profile to render (repeatable; default: all)")
    parser.add_argument("--out", type=Path, default=OUT, help="root folder for rendered configs")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; fail if the committed files differ from a fresh render")
    args = parser.parse_args(argv)
    profiles = args.profile or profile_names()
    for name in profiles:
        load_profile(name)
    problems = render_all(profiles, args.out, check=args.check)
    if problems:
        print("".join(problems))
        raise UserError("rendered configs are out of date: run `make render` and commit axolotl_configs/")
    if not args.check:
        for name in profiles:
            for stage in load_stages():
                print(f"rendered {rendered_path(name, stage, args.out).relative_to(ROOT) if args.out == OUT else rendered_path(name, stage, args.out)}")


if __name__ == "__main__":
    run_cli(main)
