"""The ``GetModelInfo`` handshake: open the link and make sure the server runs the model this client holds."""

from __future__ import annotations

from splitdet.common.wire import COMPRESSION_TO_PB, QUANTIZATION_TO_PB
from splitdet.mobile_client.link import MISMATCH, Link, LinkConfig, LinkError
from splitdet.mobile_client.settings import SetupError
from splitdet.proto import splitdet_pb2 as pb


def connect(
    config: LinkConfig, fingerprint: str | None = None, quantization: str | None = None
) -> tuple[Link, pb.ModelInfo]:
    """The open link and the server's :class:`ModelInfo`.

    ``fingerprint`` (the client head's, for modes that send bottlenecks) must equal the server's and
    ``quantization`` must be one the server accepts; otherwise, or when the server cannot be reached, the link is
    closed and :class:`SetupError` says why in one line. Behind a group target the handshake skips replicas that run
    another model than ``fingerprint``; from then on the link refuses any replica whose model differs from the one
    the handshake reached (:attr:`Link.fingerprint`).
    """
    link = Link(config)
    link.fingerprint = fingerprint  # behind a group target, replicas with another model are skipped
    try:
        info = link.model_info()
        if fingerprint is not None and info.fingerprint != fingerprint:
            raise SetupError(
                f"model mismatch: the edge server at {config.target} runs fingerprint {info.fingerprint}, this "
                f"client's checkpoint has {fingerprint}; use the same checkpoint on both sides"
            )
        accepted = info.quantizations
        if quantization is not None and accepted and QUANTIZATION_TO_PB[quantization] not in accepted:
            raise SetupError(f"the edge server at {config.target} does not accept {quantization} bottlenecks")
        if quantization == "entropy" and info.compressions and COMPRESSION_TO_PB["rans"] not in info.compressions:
            raise SetupError(
                f"the edge server at {config.target} does not decode constriction rANS frames (an older server, "
                "which decodes CompressAI's only); upgrade the server or use --quantization per_tensor"
            )
    except LinkError as e:
        link.close()
        if e.code == MISMATCH:
            raise SetupError(f"model mismatch: {e.message}; use the same checkpoint on both sides") from None
        raise SetupError(f"handshake with the edge server at {config.target} failed: {e}") from None
    except SetupError:
        link.close()
        raise
    link.fingerprint = info.fingerprint
    return link, info
