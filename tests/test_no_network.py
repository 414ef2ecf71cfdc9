"""The suite's network block (conftest, tests/netblock): an internet connect fails in the test
process and in its Python children, a local socket pair works."""
import os
import socket
import subprocess
import sys
import urllib.request

import pytest
from conftest import NetworkBlocked
from fake_data import NETBLOCK, child_env, network_env


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


CHILD = """
import urllib.request
try:
    urllib.request.urlopen("http://192.0.2.1/", timeout=1)
except Exception as error:
    print(type(error).__name__, error)
"""


@pytest.mark.parametrize("env", [None, "child_env"])
def test_children_cannot_use_the_network(env):
    """A plain child (inheriting the suite's environment) and one with child_env are blocked."""
    run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60,
                         env=child_env() if env else None)
    assert run.returncode == 0 and "must not use the network" in run.stdout, run.stdout + run.stderr


def test_network_env_drops_only_the_block():
    env = network_env()
    assert NETBLOCK not in env.get("PYTHONPATH", "").split(os.pathsep)
    assert NETBLOCK in os.environ["PYTHONPATH"].split(os.pathsep)
