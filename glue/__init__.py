"""Thin glue between the pipeline's tools. Each module is one job with a CLI:
`python -m glue.<module> --help`."""
