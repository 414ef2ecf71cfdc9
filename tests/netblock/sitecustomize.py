"""The test suite's network block, for the pytest process and every Python process it starts.

``tests/conftest.py`` imports this module and puts its folder first on ``PYTHONPATH``, so that
Python imports it at start-up in each child (``sitecustomize``). Afterwards every internet
(``AF_INET`` / ``AF_INET6``) connect raises :class:`NetworkBlocked` before any traffic; local
``AF_UNIX`` sockets (DataLoader workers) still work. Children that must reach PyPI (the upstream
integration test's pip) run without this folder on their path (``fake_data.network_env``).
"""
import socket


class NetworkBlocked(OSError):
    """A test process tried to open an internet connection."""


def _blocked(connect):
    def guarded(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise NetworkBlocked(f"tests must not use the network (connect to {address!r})")
        return connect(sock, address, *args)
    return guarded


if not getattr(socket.socket.connect, "network_blocked", False):
    for _name in ("connect", "connect_ex"):
        _guarded = _blocked(getattr(socket.socket, _name))
        _guarded.network_blocked = True
        setattr(socket.socket, _name, _guarded)
