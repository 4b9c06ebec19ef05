"""The mobile side of the split-computing runtime: ``mobile-client`` and ``split-demo``."""
