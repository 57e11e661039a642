"""Reading systemd's variables and sending sd_notify datagrams, with real sockets."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from spfmilter.process import activation


def test_variables_of_another_process_are_not_ours_and_are_removed() -> None:
    environ = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x"}
    assert activation.passed_socket(environ) is None
    assert environ == {}


def test_without_variables_nothing_is_passed() -> None:
    assert activation.passed_socket({}) is None


def test_more_than_one_socket_is_refused() -> None:
    environ = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2"}
    with pytest.raises(activation.ActivationError, match="passed 2 sockets"):
        activation.passed_socket(environ)


def test_readiness_reaches_an_abstract_notify_socket() -> None:
    name = f"spfmilter-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        manager.settimeout(5)
        environ = {"NOTIFY_SOCKET": "@" + name}
        notifier = activation.Notifier.from_environ(environ)
        assert environ == {}
        notifier.ready("serving")
        assert manager.recv(4096).decode().splitlines() == [
            "READY=1",
            "STATUS=serving",
            f"MAINPID={os.getpid()}",
        ]


def test_without_notify_socket_nothing_is_sent() -> None:
    activation.Notifier.from_environ({}).ready("serving")  # no error, no socket


def test_a_passed_inet_socket_is_described_in_milter_notation() -> None:
    with socket.socket(socket.AF_INET) as sock:
        sock.bind(("127.0.0.1", 0))
        assert activation.describe(sock) == f"inet:{sock.getsockname()[1]}@127.0.0.1"
