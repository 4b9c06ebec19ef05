"""Shared by both sides of the split: models, split, codec, wire format, checkpoints."""
