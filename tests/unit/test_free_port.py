"""The ports tests hand to the processes they start (tests.support.free_port,
controlplane.free_ports): never from the kernel's ephemeral range, where any outgoing
connection may take one before the process binds it (CI once lost a gateway that way)."""

from __future__ import annotations

import socket

import pytest

from tests.support import controlplane, free_port

pytestmark = pytest.mark.unit


def test_ports_come_from_below_the_ephemeral_range_and_are_free() -> None:
    low = controlplane._ephemeral_low()
    ports = controlplane.free_ports(20)
    assert len(set(ports)) == 20
    assert all(1024 <= port < low for port in ports), (low, ports)
    for port in [*ports, free_port()]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing holds it


def test_a_port_something_listens_on_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        held.listen()
        # Draw in the order: the taken port first.
        monkeypatch.setattr(controlplane.random, "sample", lambda pool, k: [taken, *pool])
        monkeypatch.setattr(controlplane, "_ephemeral_low", lambda: taken + 1)
        chosen = controlplane.free_ports(2)
    assert taken not in chosen
    assert len(set(chosen)) == 2
