"""Distillation / training of bottleneck-injected detectors."""
