"""Layer stages: one module per training stage, each with `train(ctx) -> Path`; llmpipe/registry.py declares them."""
