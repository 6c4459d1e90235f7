"""Render every training stage's Axolotl YAML from templates/ into axolotl_configs/<profile>/.

Values come from three places, later ones winning: the profile (templates/profiles/<p>.yml),
the stage (templates/stages.yml `values:`, whose strings may use {{ profile values }}), and the
profile's own `stages.<stage>` block. Phase 3's modifiers are one stage per domain of
templates/modifiers.yml, `3_modifier_<domain>`: its `values:` (strings may also use
{{ domain }}) take the place of the stage's, and the profile's `stages.3_modifier` block (every
modifier) comes before its `stages.3_modifier_<domain>`. A template writes each such key as
`key: {{ value("name") }}`, which renders the value with a trailing comment naming the file and
key that set it, so whoever reads a rendered file finds the line to edit in one step. Numbers
keep their source spelling (`2.0e-4`, not `0.0002`) so that grep finds both ends. Templates use
StrictUndefined: a value a template needs but nobody set is an error naming the template and
the value, never an empty string.
"""

from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import yaml

from glue.core import modifiers
from glue.core.io import UserError, load_yaml, run_cli, write_text_atomic
from glue.core.paths import ROOT, TEMPLATES, load_profile, profile_names, relative

OUT = ROOT / "axolotl_configs"
NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


@dataclass(frozen=True)
class Setting:
    """A value a template renders with, and where it was set."""

    value: Any
    origin: str  # "<file>: <dotted key>"
    text: str  # the value as a YAML scalar


def yaml_scalar(value) -> str:
    """A value as a one-line YAML scalar (quoted where YAML needs quotes)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def read_source(path: Path) -> tuple[Any, dict[str, str]]:
    """A YAML file's data, and the text of each number in it by dotted key: loading turns
    `2.0e-4` into 0.0002, and the rendered file should say what its source says."""
    data = load_yaml(path)
    spelled: dict[str, str] = {}

    def walk(node, key: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, child in node.value:
                walk(child, f"{key}.{key_node.value}" if key else key_node.value)
        elif isinstance(node, yaml.ScalarNode) and node.tag in NUMBER_TAGS:
            spelled[key] = node.value

    walk(yaml.compose(path.read_text(encoding="utf-8"), Loader=yaml.SafeLoader), "")
    return data, spelled


def environment(templates: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def load_stages(templates: Path = TEMPLATES) -> dict:
    """Every stage by name: templates/stages.yml's, then one per domain of templates/modifiers.yml,
    each with its template, `about` and the file (`source`) and key (`values_key`) of its values."""
    stages = {name: {**spec, "source": templates / "stages.yml", "values_key": f"{name}.values"}
              for name, spec in load_yaml(templates / "stages.yml").items()}
    config = modifiers.load_modifiers(path=templates / "modifiers.yml")
    for domain, spec in config["domains"].items():
        stages[modifiers.stage_name(domain)] = {
            "template": config["template"], "about": f"Phase 3: the {domain} modifier ({spec['about']}).",
            "values": config["values"], "domain": domain,
            "source": templates / "modifiers.yml", "values_key": "values"}
    return stages


def _render_string(env: jinja2.Environment, text: str, values: dict, where: str) -> str:
    try:
        return env.from_string(text).render(**values)
    except jinja2.UndefinedError as exc:
        raise UserError(f"{where}: undefined template value: {exc.message}") from None


def stage_values(profile_name: str, stage: str, templates: Path = TEMPLATES) -> dict[str, Setting]:
    """The full set of values the stage's template renders with, each with its origin."""
    stages = load_stages(templates)
    if stage not in stages:
        raise UserError(f"unknown stage {stage!r} ({relative(templates / 'stages.yml')} and "
                        f"{relative(templates / 'modifiers.yml')} have: {', '.join(stages)})")
    spec = stages[stage]
    source = spec["source"]
    profile_path = templates / "profiles" / f"{profile_name}.yml"
    profile, profile_spelled = read_source(profile_path)
    _, source_spelled = read_source(source)
    profile_stages = profile.get("stages") or {}
    if unknown := set(profile_stages) - set(stages) - {modifiers.EVERY}:
        raise UserError(f"{relative(profile_path)}: stages.{sorted(unknown)[0]} is no stage (stages: "
                        f"{', '.join(stages)}; {modifiers.EVERY} sets every modifier's values)")

    def setting(path: Path, spelled: dict[str, str], key: str, value) -> Setting:
        return Setting(value, f"{relative(path)}: {key}", spelled.get(key) or yaml_scalar(value))

    values = {key: setting(profile_path, profile_spelled, key, value)
              for key, value in profile.items() if key != "stages"}
    extra = {"domain": spec["domain"]} if "domain" in spec else {}
    env = environment(templates)
    for key, value in (spec.get("values") or {}).items():
        dotted = f"{spec['values_key']}.{key}"
        if isinstance(value, str):
            plain = {name: s.value for name, s in values.items()} | extra
            value = _render_string(env, value, plain, f"{relative(source)}: {dotted}")
        values[key] = setting(source, source_spelled, dotted, value)
    blocks = [modifiers.EVERY, stage] if "domain" in spec else [stage]
    for block in blocks:
        for key, value in (profile_stages.get(block) or {}).items():
            values[key] = setting(profile_path, profile_spelled, f"stages.{block}.{key}", value)
    values["stage"] = setting(source, {}, stage, stage)
    values["about"] = setting(source, {}, f"{stage}.about", spec["about"])
    values["stages_file"] = setting(source, {}, stage, relative(source))
    return values


def render_stage(profile_name: str, stage: str, templates: Path = TEMPLATES) -> str:
    values = stage_values(profile_name, stage, templates)
    template_name = load_stages(templates)[stage]["template"]

    def value(name: str) -> str:
        if name not in values:
            raise jinja2.UndefinedError(f"{name!r} is undefined")
        return f"{values[name].text}  # {values[name].origin}"

    try:
        return environment(templates).get_template(template_name).render(
            {name: s.value for name, s in values.items()}, value=value)
    except jinja2.UndefinedError as exc:
        raise UserError(
            f"{relative(templates / template_name)}: undefined value when rendering {stage} for profile "
            f"{profile_name}: {exc.message} (set it in {relative(templates / 'profiles' / f'{profile_name}.yml')})"
        ) from None


def rendered_path(profile_name: str, stage: str, out_root: Path = OUT) -> Path:
    return out_root / profile_name / f"{stage}.yml"


def render_all(profiles: list[str], out_root: Path = OUT, check: bool = False,
               templates: Path = TEMPLATES) -> list[str]:
    """Render every stage for `profiles`. With `check`, write nothing and return a diff for
    each file that differs from a fresh render (an empty list means up to date)."""
    problems = []
    for profile_name in profiles:
        for stage in load_stages(templates):
            text = render_stage(profile_name, stage, templates)
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
        load_profile(name)  # an unknown name fails here, with the list of known profiles
    problems = render_all(profiles, args.out, check=args.check)
    if problems:
        print("".join(problems))
        raise UserError("rendered configs are out of date: run `make render` and commit axolotl_configs/")
    if not args.check:
        for name in profiles:
            for stage in load_stages():
                print(f"rendered {relative(rendered_path(name, stage, args.out))}")


if __name__ == "__main__":
    run_cli(main)
