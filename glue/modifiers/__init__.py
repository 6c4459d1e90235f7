"""Phase 3: domain modifiers, small LoRA adapters per domain, hot-swapped on one base."""
