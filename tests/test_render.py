"""`make render`: the committed Axolotl configs are exactly what the templates produce, and
a value a template needs but no profile sets is an error, not an empty string."""

import shutil

import pytest
import yaml

from glue.core.io import UserError
from glue.train import render


def test_committed_configs_match_a_fresh_render():
    assert render.render_all(render.profile_names(), check=True) == [], "run `make render` and commit"


def test_every_profile_renders_every_stage_with_a_header():
    for profile in render.profile_names():
        for stage in render.load_stages():
            text = render.render_stage(profile, stage)
            assert text.startswith("# ") and f"profile: {profile}" in text
            assert yaml.safe_load(text)["output_dir"].startswith(f"work/{profile}/")


def test_profiles_differ_only_in_values():
    real = yaml.safe_load(render.render_stage("real", "1a_base_sft"))
    tiny = yaml.safe_load(render.render_stage("tiny", "1a_base_sft"))
    assert real["base_model"] == "meta-llama/Llama-3.1-8B-Instruct" and real["bf16"] is True
    assert real["attn_implementation"] == "flash_attention_2" and real["sample_packing"] is True
    assert real["adapter"] == tiny["adapter"] == "lora"
    assert not any(real.get(k) or tiny.get(k) for k in ("load_in_4bit", "load_in_8bit"))
    assert tiny["lora_mlp_kernel"] is False and tiny["bf16"] is False  # CPU-safe


@pytest.fixture
def scratch_templates(tmp_path, monkeypatch):
    copy = tmp_path / "templates"
    shutil.copytree(render.TEMPLATES, copy)
    monkeypatch.setattr(render, "TEMPLATES", copy)
    return copy


def test_a_value_no_profile_sets_is_an_error(scratch_templates):
    profile = scratch_templates / "profiles" / "tiny.yml"
    profile.write_text(profile.read_text().replace("lora_r: 8\n", ""))
    with pytest.raises(UserError, match=r"sft\.yml\.j2.*lora_r.*templates/profiles/tiny\.yml"):
        render.render_stage("tiny", "1a_base_sft")


def test_an_undefined_value_in_stages_yml_is_an_error(scratch_templates):
    stages = scratch_templates / "stages.yml"
    stages.write_text(stages.read_text().replace("{{ work_dir }}/1a_base_sft", "{{ wrok_dir }}/1a_base_sft"))
    with pytest.raises(UserError, match=r"stages\.yml: 1a_base_sft\.output_dir.*wrok_dir"):
        render.render_stage("tiny", "1a_base_sft")


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(UserError, match=r"unknown profile 'huge'.*real, tiny"):
        render.load_profile("huge")


def test_check_reports_a_hand_edited_file(tmp_path):
    render.render_all(["tiny"], out_root=tmp_path)
    target = tmp_path / "tiny" / "1a_base_sft.yml"
    target.write_text(target.read_text().replace("lora_r: 8", "lora_r: 16"))
    problems = render.render_all(["tiny"], out_root=tmp_path, check=True)
    assert len(problems) == 1 and "-lora_r: 16" in problems[0] and "+lora_r: 8" in problems[0]


@pytest.mark.parametrize("value,expected", [("a: b", "'a: b'"), (True, "true"), (2e-4, "0.0002"), ("work/x", "work/x")])
def test_yaml_scalar_quotes_only_when_needed(value, expected):
    assert render.yaml_scalar(value) == expected
