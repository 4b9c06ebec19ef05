"""The wire format (splitdet.proto) and its generated Python code; regenerate with ``python -m
splitdet.proto.generate``."""
