"""Phase 2: compression (llm-compressor), GGUF export (llama.cpp), 2E's dequantized copy,
confidence calibration, the compression report and zstd packages. Runs in .venv-compress."""
