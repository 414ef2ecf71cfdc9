"""The suite's network block (conftest): an internet connect fails, a local socket pair works."""
import socket
import urllib.request

import pytest
from conftest import NetworkBlocked


@pytest.mark.parametrize("address", [("127.0.0.1", 9), ("192.0.2.1", 80)])
def test_internet_connects_fail(address):
    with socket.socket() as sock, pytest.raises(NetworkBlocked, match="must not use the network"):
        sock.connect(address)


def test_urllib_fails_before_any_traffic():
    with pytest.raises(Exception) as info:
        urllib.request.urlopen("http://192.0.2.1/", timeout=1)
    assert "must not use the network" in str(info.value)


def test_local_socket_pairs_still_work():
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"ok")
        assert b.recv(2) == b"ok"
