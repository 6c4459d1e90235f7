"""Prompts sent to models (teacher, judge, labeller): templates/prompts/*.j2 rendered with their
own Jinja environment (plain text, no YAML filters), and the JSON object parsed from a reply."""

from __future__ import annotations

import functools
import json
import re

import jinja2

from glue.core.io import UserError
from glue.core.paths import TEMPLATES

_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES / "prompts")),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True)


def render_prompt(template: str, **values) -> str:
    """Render templates/prompts/<template>; a value the template needs but was not given is an error."""
    try:
        return _environment().get_template(template).render(**values)
    except jinja2.UndefinedError as exc:
        raise UserError(f"templates/prompts/{template}: undefined value: {exc.message}") from None


def parse_json_object(text: str | None) -> dict | None:
    """The JSON object in a model's reply (bare, or inside a ```json fence / prose), else None."""
    if not text:
        return None
    match = _JSON_OBJECT.search(text)
    if not match:
        return None
    try:
        value = json.loads(match.group(0))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
