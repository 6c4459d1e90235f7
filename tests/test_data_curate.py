"""End to end: the curate stage on the bundled fixtures with the tiny profile's tokenizer."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from glue.core import tiny_world
from glue.core.io import UserError
from glue.data.curate import CONFIG, DOMAINS, curate, load_config, main, split_validation, tag_domain

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "tests" / "fixtures" / "sources"


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def curated(tiny_base, tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "data"
    figures = curate("tiny", out, CONFIG, str(tiny_base), progress=False)
    return out, figures


def test_outputs_and_format(curated):
    out, figures = curated
    for name in ("curated.jsonl", "train.jsonl", "val.jsonl", "rejects.jsonl", "manifest.json",
                 "report/report.md", "report/scores.png", "report/lengths.png", "report/duplicates.jsonl"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows, train, val = read(out / "curated.jsonl"), read(out / "train.jsonl"), read(out / "val.jsonl")
    assert all(set(r) == {"id", "source", "domain", "messages"} for r in rows)
    assert {r["domain"] for r in rows} <= set(DOMAINS)
    # the finance questions planted at the end of alpaca_gpt4.jsonl give the tiny profile the domain
    assert sum(r["domain"] == "finance" and r["source"] == "alpaca_gpt4" for r in rows) >= 12
    assert len({r["id"] for r in rows}) == len(rows) == figures["rows_kept"]
    assert {r["id"] for r in train} | {r["id"] for r in val} == {r["id"] for r in rows}
    assert not {r["id"] for r in train} & {r["id"] for r in val} and val
    assert {r["source"] for r in rows} == set(load_config(CONFIG, "tiny")["sources"])


def test_every_row_is_accounted_for(curated):
    out, figures = curated
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "data" and manifest["figures"] == json.loads(json.dumps(figures))
    assert manifest["inputs"]["source:dolly"]["sha256"]
    world = load_config(CONFIG, "tiny")["profiles"]["tiny"]["world"]
    for name, c in figures["per_source"].items():
        assert c["read"] == sum(c[k] for k in c if k != "read"), name
        if name != world["source"]:
            assert c["read"] == sum(1 for line in (SOURCES / f"{name}.jsonl").read_text().splitlines() if line.strip())
    assert figures["per_source"][world["source"]]["read"] == world["rows"]
    rejects = read(out / "rejects.jsonl")
    assert len(rejects) == sum(figures["rejected"].values()) - figures["rejected"]["not_selected"]


def test_planted_rows_are_removed(curated):
    out, figures = curated
    rejects = read(out / "rejects.jsonl")
    steps = {}
    for r in rejects:
        if r["source"] != "tiny_world":  # generated rows have no file line to name
            steps.setdefault(r["step"], set()).add(r["where"].rsplit("/", 1)[1])
    # the non-English rows planted in every fixture
    assert {"alpaca_gpt4.jsonl:19", "alpaca_gpt4.jsonl:20", "dolly.jsonl:17", "dolly.jsonl:18",
            "openorca.jsonl:18", "codealpaca.jsonl:18"} <= steps["not_english"]
    # the essay-length rows, and two non-English rows the tiny tokenizer makes over 256 tokens
    # of (over-long rows are dropped first, without being judged)
    assert {"alpaca_gpt4.jsonl:22", "dolly.jsonl:20", "anthropic_hh.jsonl:21", "metamathqa.jsonl:22",
            "openorca.jsonl:19", "codealpaca.jsonl:19"} <= steps["too_long"]
    # the repetition loop and the echo in OpenOrca (a `filter` source)
    assert {"openorca.jsonl:16", "openorca.jsonl:17"} <= steps["low_score"]
    # one row of each planted near-duplicate pair, across sources too
    pairs = [{r["where"].rsplit("/", 1)[1], r["duplicate_of"].split("-")[0]} for r in rejects
             if r["step"] == "duplicate" and r["source"] != "tiny_world"]
    assert {"alpaca_gpt4.jsonl:17", "codealpaca"} in pairs  # reverse-string answer
    assert {"alpaca_gpt4.jsonl:18", "wizardlm"} in pairs  # time-management tips
    assert {"openorca.jsonl:14", "dolly"} in pairs  # photosynthesis
    assert figures["rejected"]["duplicate"] >= 8
    texts = {json.dumps(r["messages"]) for r in read(out / "curated.jsonl")}
    assert len(texts) == figures["rows_kept"]


def test_the_generated_world_is_curated_beside_the_fixtures_and_keeps_its_evaluation_split_out(curated):
    out, figures = curated
    rows = read(out / "curated.jsonl")
    world = [r for r in rows if r["source"] == "tiny_world"]
    # most generated rows survive the filters (near-duplicates of short templated prompts go)
    assert len(world) >= 0.9 * figures["per_source"]["tiny_world"]["read"]
    assert {r["domain"] for r in world} == set(tiny_world.DOMAINS)
    prompts = [r["messages"][0]["content"] for r in world]
    assert all(tiny_world.split_of(p) == "train" for p in prompts)
    assert all(tiny_world.solve(p) == r["messages"][1]["content"] for p, r in zip(prompts, world))
    hard = sum(tiny_world.parse(p).hard for p in prompts) / len(prompts)
    assert 0.1 < hard < 0.5  # hard cells are the minority, as the config says


def test_same_input_same_output(curated, tiny_base, tmp_path):
    out, _ = curated
    again = tmp_path / "again"
    curate("tiny", again, CONFIG, str(tiny_base), progress=False)
    for name in ("curated.jsonl", "train.jsonl", "val.jsonl", "rejects.jsonl"):
        assert (again / name).read_bytes() == (out / name).read_bytes(), name


def test_bad_source_fails_the_stage_without_partial_output(tiny_base, tmp_path):
    fixtures = tmp_path / "sources"
    shutil.copytree(SOURCES, fixtures)
    (fixtures / "dolly.jsonl").write_text("")
    config = yaml.safe_load(CONFIG.read_text())
    config["profiles"]["tiny"]["fixture_dir"] = str(fixtures)
    (tmp_path / "sources.yml").write_text(yaml.safe_dump(config))
    out = tmp_path / "data"
    with pytest.raises(UserError, match=r"source 'dolly': .*dolly.jsonl has no rows"):
        main(["--profile", "tiny", "--config", str(tmp_path / "sources.yml"), "--tokenizer", str(tiny_base),
              "--out", str(out)])
    assert not out.exists() and not list(tmp_path.glob(".data.*"))


def test_existing_output_is_not_replaced_without_overwrite(curated, tiny_base):
    out, _ = curated
    with pytest.raises(UserError, match="already exists"):
        curate("tiny", out, CONFIG, str(tiny_base), progress=False)


def test_domain_rules():
    config = load_config(CONFIG, "tiny")
    rules = {"domain": "rules"}

    def tag(user, spec=rules, **extra):
        return tag_domain({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "."}],
                           **extra}, spec, config["domains"])

    assert tag("Write a Python function to sort a list.") == "code"
    assert tag("Solve 3x + 7 = 22.") == "math"
    assert tag("Write a poem about the sea.") == "creative"
    assert tag("Why do atoms bond?") == "science"
    assert tag("Is the premise entailed by the hypothesis?") == "reasoning"
    assert tag("Write a bash script that backs up my photos every night with cron.") == "automation"
    assert tag("Turn this request into a JSON command: remind me at 5pm.") == "automation"
    assert tag("What is the difference between a stock and a bond?") == "finance"
    assert tag("Calculate the compound interest on $500 at 4% for 2 years.") == "finance"
    assert tag("Write a Python function that computes compound interest.") == "code"
    assert tag("Anything", {"domain": "math"}) == "math"
    assert tag("Write a poem.", config["sources"]["dolly"], category="creative_writing") == "creative"


def test_split_is_stable_per_row():
    rows = [{"id": f"r{i}"} for i in range(100)]
    train, val = split_validation(rows, 0.1, 42)
    assert len(val) == 10 and len(train) == 90
    _, val_without_one = split_validation([r for r in rows if r["id"] != train[0]["id"]], 0.1, 42)
    assert {r["id"] for r in val} == {r["id"] for r in val_without_one}
    with pytest.raises(UserError, match="too few"):
        split_validation(rows[:1], 0.1, 42)
