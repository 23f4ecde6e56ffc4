"""``local_stack.procs.free_ports``: the ports a server is started on are different ports (one
port after another may be the same port twice: Triton once got one port for gRPC and metrics
and would not start)."""

from __future__ import annotations

import socket

from local_stack.procs import FIRST_PORT, ephemeral_range, free_ports
from local_stack.tritonserver import TritonServer


def test_free_ports_are_different_bindable_and_none_of_those_taken():
    for _ in range(50):
        taken = free_ports(2)
        ports = free_ports(5, taken=taken)
        assert len(set(ports)) == 5 and not set(ports) & set(taken)
    with socket.socket() as sock:  # free indeed: each can be bound
        sock.bind(("127.0.0.1", ports[0]))


def test_a_triton_gets_three_different_ports_and_keeps_the_one_given(tmp_path):
    for _ in range(50):
        server = TritonServer(tmp_path, workdir=tmp_path / "w")
        assert len({server.http_port, server.grpc_port, server.metrics_port}) == 3
    (given,) = free_ports(1)
    server = TritonServer(tmp_path, http_port=given, workdir=tmp_path / "w")
    assert server.http_port == given and given not in (server.grpc_port, server.metrics_port)


def test_ports_are_drawn_below_the_kernels_ephemeral_range(tmp_path):
    """A port from the ephemeral range can go to any outgoing connection before the server binds
    it (Triton lost its metrics port so once and exited)."""
    low, _ = ephemeral_range()
    ports = [p for _ in range(20) for p in free_ports(3)]
    assert all(FIRST_PORT <= p < low for p in ports), (low, ports)
    (tmp_path / "range").write_text("40000\t50000\n")
    assert ephemeral_range(tmp_path / "range") == (40000, 50000)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)
