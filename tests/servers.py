"""Helpers for tests that start real server processes (MLflow, Ray nodes) on loopback."""

import os
import signal
import socket
import subprocess
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path


def free_ports(n: int = 1) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@contextmanager
def http_server(command: list[str], port: int, timeout_s: float = 90, log: Path | None = None):
    """Start `command` in its own process group, wait for /health, stop the group after. Its
    output goes to `log` when given."""
    sink = open(log, "w") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    server = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT if log else sink,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, f"{command[:4]} exited"
            assert time.monotonic() < deadline, f"{base}/health did not answer in {timeout_s} s"
            time.sleep(1)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        server.wait(timeout=30)
        if log:
            sink.close()
