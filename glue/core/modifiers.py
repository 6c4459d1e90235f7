"""Phase 3's domains (templates/modifiers.yml): which there are, which `make modifiers` trains,
and each one's data selection and evaluation tasks for a profile. `make render` reads it (one
Axolotl config per domain, glue/train/render.py), and so does glue/modifiers (data, report)."""

from __future__ import annotations

from pathlib import Path

from glue.core.io import UserError, load_yaml
from glue.core.paths import ROOT, TEMPLATES, profile_config, relative

CONFIG = TEMPLATES / "modifiers.yml"
EVERY = "3_modifier"  # a profile's `stages:` block that sets every modifier's values
DOMAIN_KEYS = {"mvp", "about", "data", "tasks"}
PER_PROFILE = {"failures", "domains"}  # what a `profiles:` block may change; Axolotl values live in templates/profiles/


def stage_name(domain: str) -> str:
    return f"{EVERY}_{domain}"


def domain_of(stage: str) -> str | None:
    """The domain of a modifier stage's name, None for any other stage."""
    prefix = f"{EVERY}_"
    return stage[len(prefix):] if stage.startswith(prefix) else None


def load_modifiers(profile: str | None = None, path: Path = CONFIG) -> dict:
    """templates/modifiers.yml, checked; with `profile`, its `profiles.<profile>` block laid over."""
    config = load_yaml(path)
    where = relative(path)
    if not isinstance(config, dict) or not isinstance(config.get("domains"), dict) or not config["domains"]:
        raise UserError(f"{where}: expected a mapping with a non-empty `domains:` mapping")
    for key in ("template", "values", "failures"):
        if key not in config:
            raise UserError(f"{where}: missing `{key}:`")
    for domain, spec in config["domains"].items():
        if not isinstance(spec, dict) or set(spec) != DOMAIN_KEYS:
            raise UserError(f"{where}: domains.{domain} needs exactly {', '.join(sorted(DOMAIN_KEYS))}")
        if not isinstance(spec["data"], list) or not spec["data"]:
            raise UserError(f"{where}: domains.{domain}.data: expected a non-empty list of curated domains")
    for name, block in (config.get("profiles") or {}).items():
        if unknown := set(block or {}) - PER_PROFILE:
            raise UserError(f"{where}: profiles.{name} may set {', '.join(sorted(PER_PROFILE))}, not "
                            f"{', '.join(sorted(unknown))} (a modifier's Axolotl values per profile go in "
                            f"templates/profiles/{name}.yml under stages.{EVERY} or stages.{EVERY}_<domain>)")
        domains = (block or {}).get("domains") or {}
        if unknown := set(domains) - set(config["domains"]):
            raise UserError(f"{where}: profiles.{name}.domains: unknown domain(s) {', '.join(sorted(unknown))} "
                            f"(domains: {', '.join(config['domains'])})")
        for domain, spec in domains.items():
            if unknown := set(spec or {}) - DOMAIN_KEYS:
                raise UserError(f"{where}: profiles.{name}.domains.{domain}: unknown key(s) {', '.join(sorted(unknown))} "
                                f"(a domain has {', '.join(sorted(DOMAIN_KEYS))})")
    return profile_config(config, profile)


def mvp_domains(config: dict) -> list[str]:
    return [d for d, spec in config["domains"].items() if spec["mvp"]]


def rendered_config(profile: str, domain: str) -> Path:
    """The committed Axolotl config of a modifier (`make render` writes it)."""
    return ROOT / "axolotl_configs" / profile / f"{stage_name(domain)}.yml"
