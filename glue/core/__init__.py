"""What every phase shares: file I/O, manifests, paths and the one profile overlay, the record
format, the one "same answer" rule, prompt rendering, model-folder checks, the LLM client and
the embedder. Imports no phase package. Runs in both environments: a module here imports only
what the environment of every phase module that uses it has (tests/test_layout.py checks)."""
