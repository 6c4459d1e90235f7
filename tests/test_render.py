"""`make render`: the committed Axolotl configs are exactly what the templates produce, a value
a template needs but no profile sets is an error, not an empty string, and every templated
value in a rendered file names the file and key that set it."""

import hashlib
import json
import re
import shutil

import jinja2
import pytest
import yaml

from glue.core import modifiers
from glue.core.io import UserError
from glue.core.paths import ROOT, relative
from glue.train import render

TEMPLATE = render.TEMPLATES / "axolotl" / "sft.yml.j2"
KEY = re.compile(r"^\s*(?:- )?(\w+):")
TEMPLATED = re.compile(r'^\s*(?:- )?(\w+): \{\{ value\("\w+"\) \}\}$')
PROVENANCE = re.compile(r"^\s*(?:- )?\w+: (?P<value>.*?)  # (?P<file>\S+): (?P<key>\S+)$")

# sha256 of json.dumps(yaml.safe_load(file), sort_keys=True) for each rendered real-profile file
# as committed before provenance comments were added (commit 1b56c6b): comments, number
# spelling and the tiny profile's changes (its learning world) change no real-profile value.
# A deliberate change of a real value updates its digest here.
REAL_VALUES = {
    ("real", "1a_base_sft"): "5713fbf77c63a6fe42ffd5429203664db153a357aec656e368c5845c3abff8b6",
    ("real", "1c_distill"): "c8ab34b05abf183875965778c54e37d43af66779016c51302e7fde7e8a43fe96",
    ("real", "2e_recovery"): "138a75af5bada3ef0353fd01a21cf9be1f043d44f8ba694a59aa5610ed0da2ec",
    # Phase 3's modifiers, as first rendered from templates/modifiers.yml
    ("real", "3_modifier_code"): "04313df7f198c9e52b7db2280688118e2762a568a83708f527a19593fe86c2d9",
    ("real", "3_modifier_reasoning"): "f4c37b1d6210c85b732681be909028b9de93549c9100e25233b72072402ef9d7",
    ("real", "3_modifier_automation"): "5d74c286ae2c028fcf6c24865da49b64d85d53a2e3aad8017303c9c3519c4a58",
    ("real", "3_modifier_math"): "f65165023fd8434deb678c2d1cada4770e3da745bc4fa99b1338f2eea35a58ba",
    ("real", "3_modifier_science"): "299040d6cd7d681764476bcf3b6d1b610ea1dbe7d915116084cde05acd6292ec",
    ("real", "3_modifier_finance"): "23cc83bbda13404d3df7ce6a778bf4756d2c125f4ed39739f03eda254e988dd0",
    ("real", "3_modifier_creative"): "a971bf86928d73fb481ddd7fe63e8c487fc0738d033404cf69a278c10272e764",
}


def test_committed_configs_match_a_fresh_render():
    assert render.render_all(render.profile_names(), check=True) == [], "run `make render` and commit"


def test_every_profile_renders_every_stage_with_a_header():
    for profile in render.profile_names():
        for stage, spec in render.load_stages().items():
            text = render.render_stage(profile, stage)
            assert text.startswith("# ") and f"profile: {profile}" in text
            assert relative(spec["source"]) in text.split("\n\n")[0]
            assert yaml.safe_load(text)["output_dir"].startswith(f"work/{profile}/")


def test_profiles_differ_only_in_values():
    real = yaml.safe_load(render.render_stage("real", "1a_base_sft"))
    tiny = yaml.safe_load(render.render_stage("tiny", "1a_base_sft"))
    assert real["base_model"] == "meta-llama/Llama-3.1-8B-Instruct" and real["bf16"] is True
    assert real["attn_implementation"] == "flash_attention_2" and real["sample_packing"] is True
    assert real["adapter"] == tiny["adapter"] == "lora"
    assert not any(real.get(k) or tiny.get(k) for k in ("load_in_4bit", "load_in_8bit"))
    assert tiny["lora_mlp_kernel"] is False and tiny["bf16"] is False  # CPU-safe


def test_the_real_profiles_values_are_unchanged():
    assert set(REAL_VALUES) == {("real", s) for s in render.load_stages()}
    for (profile, stage), digest in REAL_VALUES.items():
        values = yaml.safe_load(render.render_stage(profile, stage))
        canonical = json.dumps(values, sort_keys=True)
        assert hashlib.sha256(canonical.encode()).hexdigest() == digest, f"{profile}/{stage} now loads to {canonical}"


def _source_value(file: str, dotted_key: str, profile: str, stage: str):
    """The value `dotted_key` of `file` holds, with a stage string's {{ profile values }} (and a
    modifier's {{ domain }}) filled in."""
    value = yaml.safe_load((ROOT / file).read_text())
    for part in dotted_key.split("."):
        value = value[part]
    if isinstance(value, str) and "{{" in value:
        profile_values = yaml.safe_load((render.TEMPLATES / "profiles" / f"{profile}.yml").read_text())
        value = jinja2.Template(value, undefined=jinja2.StrictUndefined).render(
            **profile_values, domain=modifiers.domain_of(stage))
    return value


def test_every_templated_key_names_the_file_and_key_that_set_it():
    template_lines = TEMPLATE.read_text().splitlines()
    key_lines = [line for line in template_lines if KEY.match(line) and "{{" in line]
    assert all(TEMPLATED.match(line) for line in key_lines), "a templated key must use value(...)"
    templated_keys = {KEY.match(line).group(1) for line in key_lines}
    assert {"learning_rate", "early_stopping_patience", "path", "wandb_name"} <= templated_keys
    for profile in render.profile_names():
        for stage in render.load_stages():
            path = render.rendered_path(profile, stage)
            for number, line in enumerate(path.read_text().splitlines(), 1):
                key = KEY.match(line)
                if not key:
                    continue
                if key.group(1) not in templated_keys:
                    assert "# templates/" not in line, f"{path}:{number}: a literal value with a provenance comment"
                    continue
                origin = PROVENANCE.match(line)
                assert origin, f"{path}:{number}: templated value without a provenance comment"
                assert (ROOT / origin["file"]).is_file(), f"{path}:{number}: no such file"
                assert _source_value(origin["file"], origin["key"], profile, stage) == yaml.safe_load(origin["value"]), \
                    f"{path}:{number}: {origin['file']}: {origin['key']} does not hold this value"


def test_stage_values_name_the_winning_source():
    values = render.stage_values("real", "1c_distill")
    assert values["early_stopping_patience"].origin == "templates/stages.yml: 1c_distill.values.early_stopping_patience"
    assert values["learning_rate"].origin == "templates/profiles/real.yml: stages.1c_distill.learning_rate"
    assert values["lora_r"].origin == "templates/profiles/real.yml: lora_r"


def test_numbers_render_as_their_source_spells_them():
    text = render.rendered_path("real", "1a_base_sft").read_text()
    assert "learning_rate: 2.0e-4  # templates/profiles/real.yml: stages.1a_base_sft.learning_rate\n" in text
    assert yaml.safe_load(text)["learning_rate"] == 2e-4


@pytest.fixture
def scratch_templates(tmp_path):
    copy = tmp_path / "templates"
    shutil.copytree(render.TEMPLATES, copy)
    return copy


def test_a_profile_stage_value_overrides_stages_yml_and_says_so(scratch_templates):
    profile = scratch_templates / "profiles" / "tiny.yml"
    profile.write_text(profile.read_text()
                       .replace("warmup_ratio: 0.0\n", "warmup_ratio: 5.0e-2\n")
                       .replace("  1c_distill:\n", "  1c_distill:\n    early_stopping_patience: 5\n"))
    text = render.render_stage("tiny", "1c_distill", scratch_templates)
    assert re.search(r"^warmup_ratio: 5\.0e-2  # \S+/templates/profiles/tiny\.yml: warmup_ratio$", text, re.M)
    assert re.search(r"^early_stopping_patience: 5  # \S+/templates/profiles/tiny\.yml: "
                     r"stages\.1c_distill\.early_stopping_patience$", text, re.M)
    assert yaml.safe_load(text)["warmup_ratio"] == 0.05


def test_a_value_no_profile_sets_is_an_error(scratch_templates):
    profile = scratch_templates / "profiles" / "tiny.yml"
    profile.write_text(profile.read_text().replace("lora_r: 8\n", ""))
    with pytest.raises(UserError, match=r"sft\.yml\.j2.*lora_r.*templates/profiles/tiny\.yml"):
        render.render_stage("tiny", "1a_base_sft", scratch_templates)


def test_an_undefined_value_in_stages_yml_is_an_error(scratch_templates):
    stages = scratch_templates / "stages.yml"
    stages.write_text(stages.read_text().replace("{{ work_dir }}/1a_base_sft", "{{ wrok_dir }}/1a_base_sft"))
    with pytest.raises(UserError, match=r"stages\.yml: 1a_base_sft\.values\.output_dir.*wrok_dir"):
        render.render_stage("tiny", "1a_base_sft", scratch_templates)


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown profile 'huge'.*real, tiny"):
        render.load_profile("huge")


def test_check_reports_a_hand_edited_file(tmp_path):
    render.render_all(["tiny"], out_root=tmp_path)
    target = tmp_path / "tiny" / "1a_base_sft.yml"
    target.write_text(target.read_text().replace("lora_r: 8  #", "lora_r: 16  #"))
    problems = render.render_all(["tiny"], out_root=tmp_path, check=True)
    assert len(problems) == 1 and "-lora_r: 16  #" in problems[0] and "+lora_r: 8  #" in problems[0]


@pytest.mark.parametrize("value,expected", [("a: b", "'a: b'"), (True, "true"), (2e-4, "0.0002"), ("work/x", "work/x")])
def test_yaml_scalar_quotes_only_when_needed(value, expected):
    assert render.yaml_scalar(value) == expected


def test_a_modifier_takes_every_modifiers_values_then_its_own():
    values = render.stage_values("real", "3_modifier_code")
    assert values["base_model"].value == "work/real/1c_distill/merged"
    assert values["base_model"].origin == "templates/modifiers.yml: values.base_model"
    assert values["output_dir"].value == "work/real/modifiers/code/adapter"
    assert values["learning_rate"].origin == "templates/profiles/real.yml: stages.3_modifier.learning_rate"
    assert values["lora_r"].origin == "templates/profiles/real.yml: stages.3_modifier_code.lora_r"
    assert render.stage_values("real", "3_modifier_reasoning")["lora_r"].origin == \
        "templates/profiles/real.yml: stages.3_modifier.lora_r"
    for profile in render.profile_names():
        for domain in modifiers.load_modifiers()["domains"]:
            cfg = yaml.safe_load(render.render_stage(profile, modifiers.stage_name(domain)))
            assert cfg["adapter"] == "lora" and not cfg.get("load_in_4bit") and not cfg.get("load_in_8bit")
            assert cfg["datasets"][0]["path"] == f"work/{profile}/modifiers/{domain}/data/train.jsonl"


def test_a_profile_block_for_no_stage_is_an_error(scratch_templates):
    profile = scratch_templates / "profiles" / "tiny.yml"
    profile.write_text(profile.read_text() + "  3_modifier_cod:\n    lora_r: 4\n")
    with pytest.raises(UserError, match=r"tiny\.yml: stages\.3_modifier_cod is no stage .*3_modifier_code"):
        render.render_stage("tiny", "1a_base_sft", scratch_templates)


def test_axolotl_values_per_profile_are_refused_in_modifiers_yml(scratch_templates):
    path = scratch_templates / "modifiers.yml"
    path.write_text(path.read_text() + "  real:\n    values: {lora_r: 4}\n")
    with pytest.raises(UserError, match=r"profiles\.real may set domains, failures, not values .*"
                                        r"templates/profiles/real\.yml under stages\.3_modifier"):
        render.render_stage("real", "3_modifier_code", scratch_templates)
