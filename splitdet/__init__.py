"""splitdet: the split-computing runtime for object detection.

Every part installs under this one namespace; the folders stay at the repository root and pyproject.toml maps
them here: ``splitdet.proto`` (the wire), ``splitdet.common`` (models, codec, wire format), ``splitdet.edge_server``,
``splitdet.mobile_client``, ``splitdet.distill`` (training and evaluation), ``splitdet.benchmarks`` (``split-bench``)
and ``splitdet.synthetic`` (the generated scenes).
"""

__version__ = "0.1.0"
