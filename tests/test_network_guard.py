"""The test suite's network guard: local sockets work, everything else is refused."""

import socket

from conftest import _is_loopback


def test_connect_is_guarded():
    assert socket.socket.connect.__name__ == "_local_only_connect"


def test_only_loopback_counts_as_local():
    assert _is_loopback(("127.0.0.1", 80)) and _is_loopback(("::1", 80, 0, 0)) and _is_loopback("localhost")
    assert not _is_loopback(("93.184.215.14", 80)) and not _is_loopback(("example.com", 443))
