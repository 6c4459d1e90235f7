"""Benchmark (not collected by pytest): embedding + clustering of 14K synthetic failure texts,
the order of failures a real 1B run finds, with the real profile's clustering config.

    .venv/bin/python tests/bench_eval_cluster.py [N]

Prints one JSON line of timings. The texts come from 12 prompt templates with random slots,
so the cluster count says nothing about real failures; only the timings matter.
"""

import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from glue.core.embeddings import load_embedder  # noqa: E402
from glue.eval.cluster import CONFIG, cluster_embeddings, embed, load_config  # noqa: E402

rng = random.Random(0)
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo"]
THINGS = ["apples", "marbles", "books", "coins", "tickets", "stamps", "pencils", "cards"]
LANGS = ["Python", "JavaScript", "Rust", "Go", "SQL"]
TASKS = ["reverse a linked list", "parse a CSV file", "merge two sorted arrays", "validate an email address",
         "compute a moving average", "find duplicates in a list", "implement binary search", "flatten nested JSON"]
TOPICS = ["photosynthesis", "plate tectonics", "black holes", "vaccines", "the water cycle", "DNA replication",
          "inflation", "the French revolution", "neural networks", "climate change"]
TEMPLATES = [
    lambda: f"{rng.choice(NAMES)} has {rng.randint(2, 99)} {rng.choice(THINGS)} and gives away {rng.randint(1, 20)}. "
            f"How many are left after buying {rng.randint(1, 50)} more?",
    lambda: f"A train leaves at {rng.randint(1, 12)}:00 going {rng.randint(30, 120)} km/h. "
            f"How long does a {rng.randint(50, 900)} km trip take?",
    lambda: f"Write a {rng.choice(LANGS)} function to {rng.choice(TASKS)}.",
    lambda: f"Fix the bug in this {rng.choice(LANGS)} code that tries to {rng.choice(TASKS)}.",
    lambda: f"Explain {rng.choice(TOPICS)} to a {rng.choice(['child', 'student', 'manager'])} "
            f"in {rng.randint(2, 6)} sentences.",
    lambda: f"Write a {rng.choice(['haiku', 'limerick', 'sonnet', 'short story'])} about "
            f"{rng.choice(['the sea', 'autumn', 'a lost cat', 'the city at night', 'a robot'])}.",
    lambda: f"If all {rng.choice(['bloops', 'razzies'])} are {rng.choice(['blue', 'round'])} and some are "
            f"{rng.choice(['cold', 'fast'])}, must some {rng.choice(['blue', 'round'])} things be {rng.choice(['cold', 'fast'])}?",
    lambda: f"Translate '{rng.choice(['good morning', 'where is the station', 'thank you', 'I am lost'])}' "
            f"into {rng.choice(['French', 'German', 'Spanish', 'Japanese'])}.",
    lambda: f"Summarise this email from {rng.choice(NAMES)} about the "
            f"{rng.choice(['budget', 'launch', 'offsite', 'hiring plan'])} in one line.",
    lambda: f"What is the probability of rolling {rng.randint(2, 12)} with two dice, "
            f"then flipping {rng.randint(1, 5)} heads in a row?",
    lambda: f"Convert {rng.randint(1, 500)} {rng.choice(['miles', 'pounds', 'gallons', 'feet'])} "
            f"to metric units and show the steps.",
    lambda: f"Give me advice on how to {rng.choice(['ask for a raise', 'learn piano', 'sleep better', 'start running'])}.",
]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 14000
    texts = [rng.choice(TEMPLATES)() for _ in range(n)]
    config = load_config(CONFIG, "real")
    t0 = time.time()
    model = load_embedder(config["embedding_model"])
    t_load = time.time() - t0
    t0 = time.time()
    vectors = embed(model, texts)
    t_embed = time.time() - t0
    t0 = time.time()
    labels = cluster_embeddings(vectors, config)
    t_hdbscan = time.time() - t0
    t0 = time.time()
    cluster_embeddings(vectors, {**config, "method": "kmeans"})
    t_kmeans = time.time() - t0
    print(json.dumps({"texts": n, "model_load_s": round(t_load, 1), "embed_s": round(t_embed, 1),
                      "texts_per_s": round(n / t_embed), "hdbscan_s": round(t_hdbscan, 1),
                      "hdbscan_clusters": len(set(labels.tolist()) - {-1}), "kmeans_s": round(t_kmeans, 1),
                      "embed_plus_hdbscan_s": round(t_embed + t_hdbscan, 1)}))


if __name__ == "__main__":
    main()
