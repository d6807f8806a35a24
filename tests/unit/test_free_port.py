"""The serving tests' port picker: each pytest-xdist worker draws from its own block of ports
below the kernel's ephemeral range, so two workers never start servers on the same port."""

from __future__ import annotations

import socket

from tests.serving import conftest as serving


def _ports(monkeypatch, worker: str, n: int = 20) -> set[int]:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
    return {serving.free_port() for _ in range(n)}


def test_workers_draw_from_disjoint_blocks_below_the_ephemeral_range(monkeypatch):
    first, second = _ports(monkeypatch, "gw0"), _ports(monkeypatch, "gw1")
    assert not first & second
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    assert max(first | second) < low
    assert all(serving.PORT_BASE <= p < serving.PORT_BASE + serving.PORT_BLOCK for p in first)


def test_a_port_in_use_is_never_handed_out(monkeypatch):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    monkeypatch.setattr(serving, "PORT_BLOCK", 2)
    low = serving.PORT_BASE + 3 * 2
    with socket.socket() as held:
        held.bind(("127.0.0.1", low))
        held.listen()
        assert {serving.free_port() for _ in range(10)} == {low + 1}
