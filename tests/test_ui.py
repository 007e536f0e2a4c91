"""`pcbench ui` serves the tracking store: a real MLflow server process, queried over HTTP."""

import base64
import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import free_ports, http_server

from pcbench.tracking import Tracker


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_ui_serves_the_store_with_its_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "ui-test")
    kind = tracker.client.get_experiment(tracker.experiment_id).tags.get("mlflow.experimentKind")
    assert kind == "custom_model_development"  # MLflow's UI opens it as model training
    parent = tracker.start_run("search-x", {}, {"pcbench.kind": "search"})
    tracker.start_run("pc-1", {"method.name": "pc"}, {}, parent_run_id=parent)
    [port] = free_ports()
    command = [sys.executable, "-m", "pcbench", "ui", "--tracking-uri", uri, "--port", str(port)]
    log = tmp_path / "ui.log"
    with http_server(command, port, log=log) as base:
        assert f"ui-test: {base}/#/experiments/{tracker.experiment_id}/runs?workflowType=machine_learning" \
            in log.read_text()  # the runs page in MLflow's training view, printed for the user
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search", method="POST",
            data=json.dumps({"experiment_ids": [tracker.experiment_id]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.loads(response.read())["runs"]
        names = sorted(r["info"]["run_name"] for r in runs)
        assert names == ["pc-1", "search-x"]
        assert _get(base)[0] == 200  # the UI page itself
        # a page of another site that resolves its name to this machine (DNS rebinding) is refused
        rebound = urllib.request.Request(base, headers={"Host": f"attacker.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(rebound, timeout=5)
        assert refused.value.code in (400, 403)


def test_ui_refuses_a_port_taken_on_its_own_host_and_an_open_host_without_insecure(tmp_path):
    import socket

    port, other = free_ports(2)
    with socket.socket() as taken:  # taken on 127.0.0.2 only: a probe of 127.0.0.1 would miss it
        taken.bind(("127.0.0.2", port))
        taken.listen()
        for args, line in (
                (["--host", "127.0.0.2", "--port", str(port)], f"--port {port} is in use on 127.0.0.2"),
                (["--host", "0.0.0.0", "--port", str(other)], "--host 0.0.0.0 opens the tracking store"),
                (["--host", "no-such-host.invalid"], "--host no-such-host.invalid: not an address")):
            done = subprocess.run([sys.executable, "-m", "pcbench", "ui", *args], cwd=tmp_path,
                                  capture_output=True, text=True, timeout=60)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 2 and len(lines) == 1 and line in lines[0], done.stderr
    assert not list(tmp_path.iterdir())  # no mlflow.db left behind


def _status(url: str, login: tuple[str, str] | None = None, host: str | None = None) -> int:
    headers = {"Host": host} if host else {}
    if login:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_ui_with_auth_opens_to_the_network_behind_a_login_from_the_environment(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    Tracker(uri, "auth-test")
    login = ("pcbench-admin", "a-long-enough-password")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", login[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", login[1])
    [port] = free_ports()
    command = [sys.executable, "-m", "pcbench", "ui", "--tracking-uri", uri, "--host", "0.0.0.0",
               "--port", str(port), "--auth"]
    log = tmp_path / "ui.log"
    with http_server(command, port, log=log) as base:
        api = f"{base}/api/2.0/mlflow/experiments/search?max_results=5"
        assert _status(api) == 401
        assert _status(api, (login[0], "not-the-password")) == 401
        assert _status(api, login) == 200
        assert _status(api, login, host=f"attacker.example:{port}") in (400, 403)  # DNS rebinding
        assert "has no login" not in log.read_text()
        # the password is in no command line, and its configuration readable by its user alone
        servers = [p for p in Path("/proc").glob("[0-9]*") if _reads(p / "cmdline", f"--port\0{port}\0")]
        assert servers
        for process in servers:
            try:
                cmdline, environ = (process / "cmdline").read_bytes(), (process / "environ").read_bytes()
            except OSError:  # a worker that ended meanwhile
                continue
            assert login[1].encode() not in cmdline
            [ini] = [e.split(b"=", 1)[1].decode() for e in environ.split(b"\0")
                     if e.startswith(b"MLFLOW_AUTH_CONFIG_PATH=")]
            assert stat.S_IMODE(os.stat(ini).st_mode) == 0o600 and login[1] not in Path(ini).read_text()


def _reads(path: Path, text: str) -> bool:
    try:
        return text in path.read_bytes().decode(errors="replace")
    except OSError:  # a process that ended meanwhile
        return False


def test_ui_with_auth_wants_a_login_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
    [port] = free_ports()
    done = subprocess.run([sys.executable, "-m", "pcbench", "ui", "--host", "0.0.0.0", "--port", str(port),
                           "--auth"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "set MLFLOW_TRACKING_USERNAME" in lines[0]
    assert not list(tmp_path.iterdir())
