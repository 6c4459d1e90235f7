"""Thin glue between the pipeline's tools: `glue.core` (shared, imports no phase) and one package
per phase. Each module does one job and has a CLI: `python -m glue.<phase>.<module> --help`."""
