"""The userspace link shaper: rate, delay, jitter, loss, trace-driven rate, byte counts and clean closing."""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from splitdet.benchmarks.shaper import LinkShaper, Trace


class Peer:
    """A loopback TCP server for one connection: sends ``reply``, then records what arrives and when.

    With ``message`` set, arrivals are the ``message``-byte messages; otherwise every ``recv``.
    """

    def __init__(self, message: int | None = None, reply: bytes = b"") -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.message = message
        self.reply = reply
        self.arrivals: list[tuple[float, bytes]] = []
        self.received = 0
        self.eof = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.sendall(self.reply)
            buffered = b""
            while data := conn.recv(65536):
                self.received += len(data)
                if self.message is None:
                    self.arrivals.append((time.monotonic(), data))
                    continue
                buffered += data
                while len(buffered) >= self.message:
                    self.arrivals.append((time.monotonic(), buffered[: self.message]))
                    buffered = buffered[self.message :]
            self.eof.set()
        self.listener.close()


def _recv_all(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(65536)
        assert chunk, "connection closed early"
        data += chunk
    return data


def test_uplink_and_downlink_rates_within_10_percent():
    down_payload = b"d" * 200_000
    peer = Peer(reply=down_payload)
    with LinkShaper(peer.address, up_mbps=2, down_mbps=4) as shaper:
        conn = socket.create_connection(("127.0.0.1", shaper.port))
        start = time.monotonic()
        received = _recv_all(conn, len(down_payload))
        down_s = time.monotonic() - start
        start = time.monotonic()
        conn.sendall(b"u" * 200_000)
        conn.shutdown(socket.SHUT_WR)
        assert peer.eof.wait(10)
        up_s = peer.arrivals[-1][0] - start
        conn.close()
        assert received == down_payload
        assert shaper.up_bytes == peer.received == 200_000 and shaper.down_bytes == 200_000
    assert up_s == pytest.approx(200_000 * 8 / 2e6, rel=0.10)
    assert down_s == pytest.approx(200_000 * 8 / 4e6, rel=0.10)


def _one_way_s(**link) -> float:
    """Seconds an 8-byte message takes through a shaper with ``link`` settings to a listening peer."""
    peer = Peer(message=8)
    with LinkShaper(peer.address, **link) as shaper:
        conn = socket.create_connection(("127.0.0.1", shaper.port))
        time.sleep(0.1)  # let the shaper connect to the peer first
        sent = time.monotonic()
        conn.sendall(b"12345678")
        while not peer.arrivals:
            time.sleep(0.001)
        conn.close()
    return peer.arrivals[0][0] - sent


def test_one_way_delay_and_default_rto_on_loss():
    assert 0.040 <= _one_way_s(delay_ms=40) < 0.055
    assert 0.210 <= _one_way_s(delay_ms=10, loss=1.0) < 0.230  # every packet lost once: RTO max(200 ms, 2 RTT)


def test_loss_charges_the_link_twice_and_waits_the_rto():
    peer = Peer()
    with LinkShaper(peer.address, up_mbps=4, loss=1.0, rto_ms=100) as shaper:
        conn = socket.create_connection(("127.0.0.1", shaper.port))
        start = time.monotonic()
        conn.sendall(b"x" * 100_000)
        conn.shutdown(socket.SHUT_WR)
        assert peer.eof.wait(10)
        conn.close()
        assert shaper.up_bytes == 100_000
    assert peer.arrivals[-1][0] - start == pytest.approx(2 * 100_000 * 8 / 4e6 + 0.1, rel=0.10)


def test_jitter_keeps_packets_in_order_within_bounds():
    peer = Peer(message=8)
    count = 40
    with LinkShaper(peer.address, delay_ms=30, jitter_ms=20, seed=3) as shaper:
        conn = socket.create_connection(("127.0.0.1", shaper.port))
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(0.1)
        sent = []
        for i in range(count):
            sent.append(time.monotonic())
            conn.sendall(struct.pack("<d", i))
            time.sleep(0.005)
        deadline = time.monotonic() + 5
        while len(peer.arrivals) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        conn.close()
    assert [struct.unpack("<d", data)[0] for _, data in peer.arrivals] == list(range(count))
    delays = [arrived - sent[i] for i, (arrived, _) in enumerate(peer.arrivals)]
    assert all(0.009 <= d < 0.065 for d in delays)
    assert max(delays) - min(delays) > 0.015  # the jitter shows


def test_trace_driven_rate(tmp_path: Path):
    path = tmp_path / "3mbps.up"
    path.write_text("\n".join(str(t) for t in range(4, 401, 4)) + "\n")  # one 1500-byte packet every 4 ms
    trace = Trace.load(path)
    assert trace.period_ms == 400 and trace.mean_mbps == pytest.approx(3.0)
    peer = Peer()
    with LinkShaper(peer.address, up_trace=trace) as shaper:
        conn = socket.create_connection(("127.0.0.1", shaper.port))
        start = time.monotonic()
        conn.sendall(b"t" * 150_000)
        conn.shutdown(socket.SHUT_WR)
        assert peer.eof.wait(10)
        conn.close()
    assert peer.arrivals[-1][0] - start == pytest.approx(150_000 * 8 / 3e6, rel=0.10)
    bad = tmp_path / "bad"
    bad.write_text("1\nfast\n")
    with pytest.raises(ValueError, match="integer millisecond"):
        Trace.load(bad)


def test_connections_close_cleanly():
    peer = Peer(message=5)
    with LinkShaper(peer.address) as shaper:
        conn = socket.create_connection(("127.0.0.1", shaper.port))
        conn.sendall(b"hello")
        conn.close()
        assert peer.eof.wait(5) and peer.arrivals[0][1] == b"hello"
        deadline = time.monotonic() + 5
        while shaper.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert shaper.connections == 0

        closing = Peer(reply=b"bye")  # the server side closes first
        shaper.target = closing.address
        conn = socket.create_connection(("127.0.0.1", shaper.port))
        assert _recv_all(conn, 3) == b"bye"
        conn.shutdown(socket.SHUT_WR)
        assert conn.recv(10) == b""
        conn.close()

        idle = Peer()
        shaper.target = idle.address
        held = socket.create_connection(("127.0.0.1", shaper.port))
        held.settimeout(5)
        time.sleep(0.1)
    assert held.recv(10) == b""  # stopping the shaper closed the open connection
    held.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", shaper.port))


def test_unreachable_target_and_bad_options():
    spare = socket.create_server(("127.0.0.1", 0))
    address = spare.getsockname()
    spare.close()
    with LinkShaper(address) as shaper:
        conn = socket.create_connection(("127.0.0.1", shaper.port))
        conn.settimeout(5)
        assert conn.recv(10) == b""
        conn.close()
    for options in ({"up_mbps": 0}, {"loss": 1.5}, {"delay_ms": -1}, {"up_mbps": 1, "up_trace": Trace("t", (1,))}):
        with pytest.raises(ValueError):
            LinkShaper(address, **options)
