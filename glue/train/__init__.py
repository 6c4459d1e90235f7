"""Training stages (1A, 1C, 2E): render the Axolotl configs, check them, copy them into
experiments, build the tiny profile's base model, and merge adapters with proof. Runs in .venv."""
