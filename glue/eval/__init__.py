"""Evaluation and Phase 1B: benchmark suites through lm-eval, judges, the student's failures,
their clusters, and before/after comparisons. Runs in .venv; `evaluate` also runs in
.venv-compress, where it scores compressed checkpoints and GGUF files."""
