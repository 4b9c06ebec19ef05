"""The edge server: serves the tail of a split R-CNN (and the whole model for pure offloading) over gRPC."""
