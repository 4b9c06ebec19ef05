"""``split-bench``: local, offload, split, split+filter and auto compared over emulated links and emulated device
speeds (installed, checkout-independent). The one-off studies are in ``studies/`` (not installed); the bench's
committed runs are under ``benchmarks/results/``."""
