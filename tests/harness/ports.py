"""Ports on loopback for servers the tests start, and for connections meant to be refused."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A port nothing listens on: bound once, then released, for a server the test starts next
    (or a connection it wants refused). With `udp`, the port is free for UDP as well (dnsmasq
    listens on both)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            if not udp:
                return port
            with socket.socket(family, socket.SOCK_DGRAM) as datagram:
                try:
                    datagram.bind((host, port))
                except OSError:
                    continue  # taken for UDP: try another
                return port


def closed_port(host: str = "127.0.0.1") -> int:
    """A `free_port`, named for what a check test does with it: connect, and be refused."""
    return free_port(host)
