"""Phase 0: curate the training set (sources, quality score, English filter, near-duplicate
removal, report). Runs in .venv."""
