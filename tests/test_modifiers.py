"""Phase 3, domain modifiers: the domains' config, each modifier's data selection, the loader that
switches adapters on one base (and refuses another base), the report's table and sizes. The
adapters here are built with peft directly (random, non-zero weights), so no test trains."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from glue.core.io import UserError
from glue.core.modifiers import load_modifiers, mvp_domains
from glue.modifiers import data as data_mod
from glue.modifiers import report as report_mod
from glue.modifiers.hotswap import BASE, ModifierSet, base_problems, record_base
from tests.test_merge import make_adapter

ROOT = Path(__file__).resolve().parent.parent


def row(id_, domain, source="fixture"):
    return {"id": id_, "source": source, "domain": domain,
            "messages": [{"role": "user", "content": f"q {id_}"}, {"role": "assistant", "content": f"a {id_}"}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---- the domains ----------------------------------------------------------------------------

def test_the_mvp_is_code_reasoning_automation_and_tiny_scores_them_on_the_world():
    config = load_modifiers("tiny")
    assert mvp_domains(config) == ["code", "reasoning", "automation"]
    assert {"math", "science", "finance", "creative"} <= set(config["domains"])
    assert config["domains"]["code"]["tasks"] == ["tiny_world_code"]
    assert load_modifiers("real")["domains"]["code"]["tasks"] == ["humaneval_instruct"]
    assert config["failures"]["prompts"] < load_modifiers("real")["failures"]["prompts"]


def test_a_domain_without_data_domains_is_refused(tmp_path):
    text = (ROOT / "templates" / "modifiers.yml").read_text().replace("    data: [finance]\n", "    data: []\n")
    path = tmp_path / "modifiers.yml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"domains\.finance\.data: expected a non-empty list"):
        load_modifiers(path=path)


def test_a_misspelt_per_profile_domain_key_is_refused(tmp_path):
    text = (ROOT / "templates" / "modifiers.yml").read_text().replace("code: {tasks: [tiny_world_code]}",
                                                                       "code: {taks: [tiny_world_code]}")
    path = tmp_path / "modifiers.yml"
    path.write_text(text)
    with pytest.raises(UserError, match=r"profiles\.tiny\.domains\.code: unknown key\(s\) taks"):
        load_modifiers("tiny", path=path)


# ---- data -------------------------------------------------------------------------------------

def test_select_rows_keeps_the_domains_rows_and_names_what_the_split_has(tmp_path):
    split = write_jsonl(tmp_path / "train.jsonl", [row("a", "code"), row("b", "math"), row("c", "code")])
    assert [r["id"] for r in data_mod.select_rows(split, ["code"])] == ["a", "c"]
    assert [r["id"] for r in data_mod.select_rows(split, ["code", "math"])] == ["a", "b", "c"]
    with pytest.raises(UserError, match=r"train\.jsonl: no rows of domain finance \(it has: code \(2\), math \(1\)\).*"
                                        r"templates/data/sources\.yml"):
        data_mod.select_rows(split, ["finance"])


def test_the_failure_search_sample_is_seeded_and_keeps_file_order():
    rows = [row(str(i), "code") for i in range(50)]
    picked = data_mod.sample(rows, 10, seed=42)
    assert picked == data_mod.sample(rows, 10, seed=42) != data_mod.sample(rows, 10, seed=1)
    assert [int(r["id"]) for r in picked] == sorted(int(r["id"]) for r in picked)
    assert data_mod.sample(rows, 500, seed=42) == rows


def test_combine_keeps_each_id_once_and_no_row_in_both_splits():
    curated_train, curated_val = [row("a", "code"), row("b", "code")], [row("v", "code")]
    new_train = [row("d1", "code", "distill:solver"), row("a", "code")]  # 1C's mix re-samples curated rows
    new_val = [row("d2", "code", "distill:solver"), row("b", "code")]
    train, val = data_mod.combine(curated_train, curated_val, new_train, new_val)
    assert [r["id"] for r in train] == ["a", "b", "d1"]
    assert [r["id"] for r in val] == ["v", "d2"]


@pytest.fixture
def domain_workspace(tmp_path, monkeypatch):
    """A profile whose curated splits and modifier config live under tmp_path."""
    data_dir, work = tmp_path / "data", tmp_path / "work"
    write_jsonl(data_dir / "train.jsonl", [row(f"t{i}", "code") for i in range(6)] + [row("m", "math")])
    write_jsonl(data_dir / "val.jsonl", [row("v1", "code"), row("v2", "math")])
    config = tmp_path / "3_modifier_code.yml"
    target = work / "modifiers" / "code" / "data"
    config.write_text(yaml.safe_dump({"base_model": str(tmp_path / "base"), "datasets": [{"path": str(target / "train.jsonl")}],
                                      "test_datasets": [{"path": str(target / "val.jsonl")}]}))
    monkeypatch.setattr(data_mod, "load_profile", lambda profile: {"data_dir": str(data_dir), "work_dir": str(work)})
    monkeypatch.setattr(data_mod, "rendered_config", lambda profile, domain: config)
    return target


def test_too_few_failures_train_the_modifier_on_the_curated_rows_alone(domain_workspace, monkeypatch):
    monkeypatch.setattr(data_mod, "collect_failures",
                        lambda *a, **k: {"items": 6, "overall": {"loss": 1, "loss_rate": 1 / 6}})
    monkeypatch.setattr(data_mod, "cluster_failures", lambda *a, **k: pytest.fail("one failure is not clustered"))
    figures = data_mod.build("tiny", "code")
    assert [json.loads(line)["id"] for line in (domain_workspace / "train.jsonl").read_text().splitlines()] == \
        [f"t{i}" for i in range(6)]
    assert figures["clusters"] is None and figures["distilled_new"] == 0 and figures["val"] == 1
    assert json.loads((domain_workspace / "manifest.json").read_text())["parameters"]["domain"] == "code"
    with pytest.raises(UserError, match=r"train\.jsonl already exists: .*OVERWRITE=1"):
        data_mod.build("tiny", "code")


def test_failures_become_targeted_examples_through_1b_and_1c(domain_workspace, monkeypatch):
    seen = {}

    def failures(model, prompts, out, profile, **kwargs):
        seen["prompts"] = [json.loads(line)["id"] for line in Path(prompts).read_text().splitlines()]
        return {"items": len(seen["prompts"]), "overall": {"loss": 3, "loss_rate": 0.5}}

    def distill(profile, clusters, curated, out, budget_usd=None):
        seen["curated"] = Path(curated).read_text()
        write_jsonl(out / "train.jsonl", [row("new1", "code", "distill:solver"), row("t0", "code")])
        write_jsonl(out / "val.jsonl", [row("new2", "code", "distill:solver")])
        return {"new": 2, "spend_usd": 0.0}

    monkeypatch.setattr(data_mod, "collect_failures", failures)
    monkeypatch.setattr(data_mod, "cluster_failures", lambda *a, **k: {"n_clusters": 1})
    monkeypatch.setattr(data_mod, "distill", distill)
    figures = data_mod.build("tiny", "code")
    assert seen["prompts"] == [f"t{i}" for i in range(6)]  # the domain's training rows, never its held-out ones
    assert '"math"' not in seen["curated"]
    train = [json.loads(line)["id"] for line in (domain_workspace / "train.jsonl").read_text().splitlines()]
    assert train == [f"t{i}" for i in range(6)] + ["new1"]
    assert figures["clusters"] == 1 and figures["train"] == 7 and figures["val"] == 2


# ---- the loader -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def adapters(tiny_base, tmp_path_factory) -> dict[str, Path]:
    """Three LoRA adapters over the tiny base, each with its own random weights."""
    import torch

    root = tmp_path_factory.mktemp("modifiers")
    out = {}
    for seed, name in enumerate(("code", "reasoning", "automation")):
        torch.manual_seed(seed)
        out[name] = make_adapter(tiny_base, root / name)
    return out


def probe_batch(base: Path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in ("What is 47 + 38?", "Write a Python function scale(x) that returns x times 3.")]
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)


def test_switching_modifiers_gives_the_logits_of_each_loaded_alone(tiny_base, adapters):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    batch = probe_batch(tiny_base)
    swap = ModifierSet(tiny_base, adapters)
    seen = {}
    for name in ("code", "reasoning", "code", BASE, "automation", "reasoning", BASE, "automation"):
        with swap.switched(name) as model, torch.no_grad():
            seen.setdefault(name, []).append(model(**batch).logits)
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32).eval()(**batch).logits
        for name, path in adapters.items():
            fresh = AutoModelForCausalLM.from_pretrained(tiny_base, dtype=torch.float32)
            alone = PeftModel.from_pretrained(fresh, str(path)).eval()(**batch).logits
            assert (alone - plain).abs().max() > 1e-2, f"{name} changes nothing: the comparison would prove nothing"
            for logits in seen[name]:
                torch.testing.assert_close(logits, alone, rtol=0, atol=1e-5)
    for logits in seen[BASE]:
        torch.testing.assert_close(logits, plain, rtol=0, atol=1e-5)
    assert isinstance(swap.answer("code", "What is 47 + 38?", max_new_tokens=4), str)
    with pytest.raises(UserError, match=r"unknown modifier 'math' \(loaded: base, code, reasoning, automation\)"):
        swap.answer("math", "What is 47 + 38?")


def test_refuses_an_adapter_trained_over_another_base(tiny_base, adapters, tmp_path):
    other = Path(shutil.copytree(tiny_base, tmp_path / "other_base"))
    with pytest.raises(UserError) as err:
        ModifierSet(other, {"code": adapters["code"]})
    assert str(err.value).startswith("refusing to load the modifiers:")
    assert (f"{adapters['code']}/adapter_config.json: the adapter was trained on `{tiny_base}` but the base it is "
            f"applied to is `{other}`: serve it over the base it was trained on") in str(err.value)


def test_refuses_a_base_rebuilt_in_place_by_its_recorded_hash(tiny_base, adapters, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    base = Path(shutil.copytree(tiny_base, tmp_path / "base"))
    run = Path(shutil.copytree(adapters["code"], tmp_path / "run"))
    adapter_config = json.loads((run / "adapter_config.json").read_text())
    (run / "adapter_config.json").write_text(json.dumps({**adapter_config, "base_model_name_or_path": str(base)}))
    config = tmp_path / "3_modifier_code.yml"
    config.write_text(yaml.safe_dump({"base_model": str(base), "output_dir": str(run),
                                      "datasets": [{"path": str(tmp_path / "train.jsonl")}]}))
    manifest = json.loads(record_base(config).read_text())
    assert manifest["stage"] == "3_modifier" and manifest["inputs"]["base"]["sha256"]
    assert base_problems(run, base) == []

    model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)  # 1C retrained and merged again: same folder, other weights
    model.save_pretrained(base)
    problems = base_problems(run, base)
    assert len(problems) == 1 and problems[0].startswith(f"{run}/manifest.json: the adapter was trained over `{base}`")
    assert "rebuilt since?" in problems[0] and "make modifier DOMAIN=<domain> OVERWRITE=1" in problems[0]


def test_recording_needs_a_finished_adapter(tmp_path):
    config = tmp_path / "3_modifier_code.yml"
    config.write_text(yaml.safe_dump({"base_model": "b", "output_dir": str(tmp_path / "run"), "datasets": [{"path": "x"}]}))
    with pytest.raises(UserError, match=r"run: no finished adapter \(adapter_model\.safetensors\) to record"):
        record_base(config)


# ---- sizes and the report -----------------------------------------------------------------------

def test_computed_sizes_match_llama_3_1_8b_and_the_real_configs():
    assert report_mod.base_parameters(report_mod.LLAMA_31_8B) == 8_030_261_248  # the model card's 8.03B
    assert report_mod.lora_parameters(report_mod.LLAMA_31_8B, 16) == 16 * 32 * (8192 + 5120 + 5120 + 8192 + 3 * 18432)
    rows = {r["modifier"]: r for r in report_mod.computed_real_sizes()}
    assert set(rows) == set(load_modifiers()["domains"])
    code = rows["code"]
    assert code["rank"] == 32 and code["parameters"] == 83_886_080 and code["size_mb"] == pytest.approx(335.544)
    assert code["bits_per_base_parameter"] == pytest.approx(83_886_080 * 32 / 8_030_261_248)
    assert code["how"].startswith("computed from axolotl_configs/real/3_modifier_code.yml")


def test_measured_sizes_agree_with_the_computation(tiny_base, adapters):
    from transformers import AutoModelForCausalLM

    base_config = json.loads((tiny_base / "config.json").read_text())
    assert report_mod.base_parameters(base_config) == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_base).parameters())
    (measured,) = report_mod.measured_sizes({"code": adapters["code"]}, base_config)
    assert measured["rank"] == 4 and measured["parameters"] == report_mod.lora_parameters(base_config, 4)
    on_disk = (adapters["code"] / "adapter_model.safetensors").stat().st_size
    assert measured["parameters"] * 4 < on_disk < measured["parameters"] * 4 + 20_000  # fp32 + the header


def fake_report() -> dict:
    models, domains = [BASE, "code", "reasoning"], ["code", "reasoning", "math"]
    scores = {"code": {BASE: 1.0, "code": 1.0, "reasoning": 0.99}, "reasoning": {BASE: 0.465, "code": 0.4, "reasoning": 0.545},
              "math": {BASE: 0.5, "code": 0.45, "reasoning": 0.25}}
    losses = {"code": {BASE: 0.72, "code": 0.61, "reasoning": 0.73}, "reasoning": {BASE: 1.09, "code": 1.2, "reasoning": 1.06},
              "math": {}}
    return {"base": "work/tiny/1c_distill/merged", "suite": "eval_configs/suites/tiny_1a.yml", "models": models,
            "domains": domains, "tasks": {d: [f"tiny_world_{d}"] for d in domains}, "heldout_split": "val.jsonl",
            "heldout_limit": 200, "scores": scores, "losses": losses,
            "own_domain": report_mod.own_domain(scores, losses, ["code", "reasoning"]), "base_parameters": 1_115_264,
            "sizes": [], "sizes_real_computed": report_mod.computed_real_sizes()}


def test_the_report_is_one_domain_by_model_table_with_each_modifier_against_the_base(tmp_path):
    doc = fake_report()
    verdicts = {r["modifier"]: r for r in doc["own_domain"]}
    # code is at the task's ceiling: the held-out loss is where it can beat the base
    assert verdicts["code"]["beats_base_on_score"] is False and verdicts["code"]["beats_base_on_loss"] is True
    assert verdicts["reasoning"]["beats_base_on_score"] is True
    text = report_mod.markdown(doc)
    assert "| domain | base | code | reasoning |" in text
    assert "| reasoning | 0.465 | 0.400 (-0.065) | **0.545 (+0.080)** |" in text
    assert "| math | - | - | - |" in text  # no held-out rows: said, not invented
    assert "| code | 1.000 | 1.000 | 0.7200 | 0.6100 | on loss |" in text
    report_mod.heatmap(doc, tmp_path / "heatmap.png")
    assert (tmp_path / "heatmap.png").read_bytes()[:4] == b"\x89PNG"


def test_a_domain_task_missing_from_the_suite_is_named(tmp_path):
    with pytest.raises(UserError, match=r"modifiers\.yml: task\(s\) tiny_world_math are not in .*real_1a\.yml"):
        report_mod.domain_suite(ROOT / "eval_configs" / "suites" / "real_1a.yml", ["gsm8k_cot_llama", "tiny_world_math"])
