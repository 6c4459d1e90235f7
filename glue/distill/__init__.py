"""Phase 1C: targeted distillation data from a teacher for the 1B failure clusters, resumable
and within a budget. Runs in .venv."""
