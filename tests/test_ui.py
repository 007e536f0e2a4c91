"""`pcbench ui` serves the tracking store: a real MLflow server process, queried over HTTP."""

import json
import subprocess
import sys
import urllib.error
import urllib.request

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
