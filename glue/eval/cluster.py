"""Phase 1B, step 2: embed the failures (sentence-transformers), cluster them (HDBSCAN with
noise kept as its own group, or KMeans), label each cluster (the labeller model, or offline a
rule-based labeller that says so), and write the report, the JSON and a 2-D picture.

Output folder (`--out`), the input of the 1C distillation stage:

clusters.json   {"format": "failure-clusters/v1",
                 "failures": "<path of the failures.jsonl clustered>",
                 "method": "hdbscan" | "kmeans", "parameters": {...}, "embedding_model": "...",
                 "n_failures": int, "n_clusters": int (noise not counted), "noise": int,
                 "labeller": "llm:<model>" | "rules",
                 "clusters": [{
                    "cluster_id": int,            # -1 is HDBSCAN's noise group
                    "is_noise": bool,
                    "size": int,
                    "label": {"name": str, "description": str, "domain": str,
                              "source": "llm:<model>" | "rules" | "rules (llm output unparsed)"},
                    "domains": {domain: count},
                    "representative_ids": [failure id, ...],   # nearest the centroid first
                    "member_ids": [failure id, ...],
                    "world_cell": {"label": "add/hard", "purity": 0.93}  # tiny profile only: the generator's
                    }]}                               # label most members carry, and its share
members.jsonl   every failure record of failures.jsonl plus "cluster_id"
report.md       clusters with sizes, labels and examples; clusters.png (PCA 2-D, coloured by cluster)
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np

from glue.core import tiny_world
from glue.core.embeddings import load_embedder
from glue.core.io import UserError, atomic_path, iter_jsonl, load_yaml, run_cli, write_jsonl_atomic, write_text_atomic
from glue.core.llm_client import LLMClient, endpoint_settings
from glue.core.manifest import write_manifest
from glue.core.paths import ROOT, profile_config
from glue.core.prompts import parse_json_object, render_prompt

CONFIG = ROOT / "eval_configs" / "clustering.yml"
FORMAT = "failure-clusters/v1"
NOISE = -1


def load_config(path: Path, profile: str) -> dict:
    config = load_yaml(path)
    if not isinstance(config, dict) or config.get("method") not in ("hdbscan", "kmeans"):
        raise UserError(f"{path}: expected a mapping with method: hdbscan or kmeans")
    return profile_config(config, profile)


def embed(embedder, texts: list[str], batch_size: int = 128) -> np.ndarray:
    return embedder.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                           show_progress_bar=len(texts) > 1000, convert_to_numpy=True)


def cluster_embeddings(vectors: np.ndarray, config: dict) -> np.ndarray:
    """One label per row; HDBSCAN's noise is -1. Embeddings are unit length, so Euclidean
    distance orders pairs as cosine distance does."""
    seed = int(config.get("seed", 0))
    if config["method"] == "kmeans":
        from sklearn.cluster import KMeans

        params = config["kmeans"]
        k = min(int(params["n_clusters"]), len(vectors))
        return KMeans(n_clusters=k, n_init=params.get("n_init", 10), random_state=seed).fit_predict(vectors)
    import hdbscan
    from sklearn.decomposition import PCA

    params = dict(config["hdbscan"])
    components = int(params.pop("pca_components", 0) or 0)
    if components and components < min(vectors.shape):
        vectors = PCA(n_components=components, random_state=seed).fit_transform(vectors)
    params["min_cluster_size"] = max(2, min(int(params["min_cluster_size"]), len(vectors)))
    return hdbscan.HDBSCAN(**params).fit_predict(vectors)


def representatives(vectors: np.ndarray, labels: np.ndarray, k: int) -> dict[int, list[int]]:
    """Row indices of each cluster's k members nearest its centroid."""
    out = {}
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        centroid = vectors[rows].mean(axis=0)
        order = np.argsort(((vectors[rows] - centroid) ** 2).sum(axis=1))
        out[int(label)] = rows[order[:k]].tolist()
    return out


def rule_labels(texts: list[str], labels: np.ndarray, domains: list[str], n_terms: int = 4) -> dict[int, dict]:
    """Offline labels: the terms whose TF-IDF weight is most above the corpus average in the cluster."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(stop_words="english", max_features=20000, token_pattern=r"(?u)\b[a-zA-Z]{3,}\b")
    try:
        matrix = vectorizer.fit_transform(texts)
        vocabulary = vectorizer.get_feature_names_out()
        overall = np.asarray(matrix.mean(axis=0)).ravel()
    except ValueError:  # nothing but stop words
        matrix, vocabulary, overall = None, [], None
    out = {}
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        terms = []
        if matrix is not None:
            lift = np.asarray(matrix[rows].mean(axis=0)).ravel() - overall
            terms = [vocabulary[i] for i in np.argsort(-lift)[:n_terms] if lift[i] > 0]
        domain_counts = Counter(domains[i] for i in rows)
        top_domain, top_n = domain_counts.most_common(1)[0]
        noise = label == NOISE
        out[int(label)] = {
            "name": ("noise: " if noise else "") + (" / ".join(terms) or "no distinctive terms"),
            "description": (f"Rule-based label (offline, no LLM): the terms most distinctive of these "
                            f"{len(rows)} failures are {', '.join(terms) or 'none'}."),
            "domain": top_domain if top_n / len(rows) >= 0.6 else "mixed",
            "source": "rules",
        }
    return out


def llm_labels(client: LLMClient, params: dict, failures: list[dict], reps: dict[int, list[int]],
               fallback: dict[int, dict], sizes: dict[int, int]) -> dict[int, dict]:
    """Ask the labeller model for each non-noise cluster's name; unparsable answers keep the
    rule-based label and say so."""
    ids = [c for c in reps if c != NOISE]
    requests = []
    for c in ids:
        examples = [{"prompt": failures[i]["prompt"][:800], "answer": failures[i].get("student_answer", "")[:600],
                     "reason": failures[i].get("reason", "")} for i in reps[c]]
        domains = ", ".join(f"{d} ({n})" for d, n in Counter(failures[i]["domain"] for i in reps[c]).most_common())
        requests.append([{"role": "user", "content": render_prompt(
            "cluster_label.j2", cluster_id=c, size=sizes[c], domains=domains, examples=examples)}])
    results = client.chat_many(requests, params)
    labels = dict(fallback)
    for c, result in zip(ids, results):
        obj = parse_json_object(result.text) if result.ok else None
        if obj and all(isinstance(obj.get(k), str) and obj[k].strip() for k in ("name", "description")):
            labels[c] = {"name": obj["name"].strip(), "description": obj["description"].strip(),
                         "domain": str(obj.get("domain") or fallback[c]["domain"]).strip(),
                         "source": f"llm:{client.model}"}
        else:
            labels[c] = {**fallback[c], "source": "rules (llm output unparsed)" if result.ok
                         else f"rules (llm call failed: {result.error})"}
    return labels


def plot(vectors: np.ndarray, labels: np.ndarray, names: dict[int, str], target: Path, seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.decomposition import PCA

    points = PCA(n_components=2, random_state=seed).fit_transform(vectors) if len(vectors) > 2 else \
        np.pad(vectors[:, :2], ((0, 0), (0, max(0, 2 - vectors.shape[1]))))
    fig, ax = plt.subplots(figsize=(9, 7))
    cmap = plt.get_cmap("tab20")
    for n, label in enumerate(sorted(set(labels.tolist()))):
        rows = labels == label
        color = "lightgrey" if label == NOISE else cmap(n % 20)
        ax.scatter(points[rows, 0], points[rows, 1], s=10, color=color, alpha=0.8,
                   label=f"{label}: {names[label][:40]} ({rows.sum()})")
    ax.set_title(f"Failures in 2-D (PCA of sentence embeddings), {len(vectors)} points")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    with atomic_path(target, overwrite=True) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def world_cell(prompts: list[str]) -> dict | None:
    """The generated world's cell most of a cluster's prompts belong to and its share of the
    cluster (purity against the generator's labels); None when no prompt is of the world."""
    labels = Counter(tiny_world.label(p) for p in prompts)
    best = max((label for label in labels if label), key=labels.get, default=None)
    return {"label": best, "purity": round(labels[best] / len(prompts), 3)} if best else None


def report_markdown(doc: dict, failures_by_id: dict[str, dict]) -> str:
    lines = [f"# Failure clusters ({doc['method']})", "",
             f"- failures: {doc['n_failures']} from `{doc['failures']}`",
             f"- clusters: {doc['n_clusters']}, noise: {doc['noise']}",
             f"- embedding model: {doc['embedding_model']}; labeller: {doc['labeller']}", "",
             "![clusters](clusters.png)", "",
             "| cluster | size | domain | name | label source | generated cell | purity |", "|---|---|---|---|---|---|---|"]
    for c in doc["clusters"]:
        cell = c.get("world_cell")
        lines.append(f"| {c['cluster_id']} | {c['size']} | {c['label']['domain']} | {c['label']['name']} "
                     f"| {c['label']['source']} |" + (f" {cell['label']} | {100 * cell['purity']:.0f}% |" if cell else " | |"))
    for c in doc["clusters"]:
        lines += ["", f"## Cluster {c['cluster_id']}: {c['label']['name']} ({c['size']})", "",
                  c["label"]["description"], "", "Domains: " + ", ".join(f"{d} {n}" for d, n in c["domains"].items()),
                  "", "Examples (nearest the centroid):"]
        for fid in c["representative_ids"]:
            f = failures_by_id[fid]
            prompt = " ".join(f["prompt"].split())[:200]
            lines.append(f"- `{fid}` [{f['domain']}] {prompt} — *{f.get('reason', '')[:120]}*")
    return "\n".join(lines) + "\n"


def cluster_failures(failures_path: Path, out: Path, profile: str, config_path: Path = CONFIG,
                     method: str | None = None, overwrite: bool = False) -> dict:
    started = time.time()
    config = load_config(config_path, profile)
    if method:
        config["method"] = method
    failures = list(iter_jsonl(failures_path))
    if len(failures) < 2:
        raise UserError(f"{failures_path}: {len(failures)} failures; clustering needs at least 2")
    ids = [str(f.get("id", i)) for i, f in enumerate(failures)]
    if len(set(ids)) != len(ids):
        raise UserError(f"{failures_path}: failure ids are not unique (the cluster file refers to them by id)")
    for i, f in enumerate(failures):
        if missing := [k for k in config["embed_fields"] + ["domain"] if k not in f]:
            raise UserError(f"{failures_path}: record {i + 1} lacks {missing}")
    texts = ["\n".join(str(f[k]) for k in config["embed_fields"]) for f in failures]

    t0 = time.time()
    vectors = embed(load_embedder(config["embedding_model"]), texts)
    t_embed = time.time() - t0
    t0 = time.time()
    labels = cluster_embeddings(vectors, config)
    t_cluster = time.time() - t0

    reps = representatives(vectors, labels, int(config["representatives"]))
    sizes = {int(c): int(n) for c, n in zip(*np.unique(labels, return_counts=True))}
    domains = [f["domain"] for f in failures]
    names = rule_labels(texts, labels, domains)
    labeller_cfg = endpoint_settings("labeller", profile=profile)
    labeller = "rules"
    if labeller_cfg["backend"] == "llm":
        client = LLMClient.for_role("labeller", profile)
        params = {"temperature": labeller_cfg["temperature"], "max_tokens": labeller_cfg["max_tokens"]}
        names = llm_labels(client, params, failures, reps, names, sizes)
        labeller = f"llm:{client.model}"

    clusters = []
    for c in sorted(sizes, key=lambda c: (c == NOISE, -sizes[c], c)):
        rows = np.flatnonzero(labels == c)
        clusters.append({"cluster_id": c, "is_noise": c == NOISE, "size": sizes[c], "label": names[c],
                         "domains": dict(Counter(domains[i] for i in rows).most_common()),
                         "representative_ids": [ids[i] for i in reps[c]],
                         "member_ids": [ids[i] for i in rows],
                         **({"world_cell": cell} if (cell := world_cell([failures[i]["prompt"] for i in rows])) else {})})
    doc = {"format": FORMAT, "failures": str(failures_path), "method": config["method"],
           "parameters": config[config["method"]], "embedding_model": config["embedding_model"],
           "embed_fields": config["embed_fields"], "n_failures": len(failures),
           "n_clusters": sum(1 for c in clusters if not c["is_noise"]), "noise": sizes.get(NOISE, 0),
           "labeller": labeller, "clusters": clusters}
    with atomic_path(out, overwrite=overwrite) as tmp:
        tmp.mkdir()
        write_text_atomic(tmp / "clusters.json", json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
        write_jsonl_atomic(tmp / "members.jsonl", ({**f, "cluster_id": int(c)} for f, c in zip(failures, labels)))
        plot(vectors, labels, {c: names[c]["name"] for c in sizes}, tmp / "clusters.png", int(config.get("seed", 0)))
        write_text_atomic(tmp / "report.md", report_markdown(doc, dict(zip(ids, failures))))
        figures = {"n_failures": len(failures), "n_clusters": doc["n_clusters"], "noise": doc["noise"],
                   "embed_seconds": round(t_embed, 2), "cluster_seconds": round(t_cluster, 2)}
        write_manifest(tmp, "1b_clusters", {"failures": failures_path, "config": config_path},
                       {"profile": profile, "labeller": labeller, **config},
                       figures, started)
    return doc


def main(argv: list[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m glue.eval.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--failures", type=Path, required=True, help="failures.jsonl written by glue.eval.failures")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. work/<profile>/1b_clusters")
    parser.add_argument("--profile", default="real")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--method", choices=["hdbscan", "kmeans"], help="override the config's method")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    doc = cluster_failures(args.failures, args.out, args.profile, args.config, args.method, args.overwrite)
    print(f"{doc['n_failures']} failures -> {doc['n_clusters']} clusters + {doc['noise']} noise "
          f"({doc['labeller']} labels) -> {args.out}")


if __name__ == "__main__":
    run_cli(main)
