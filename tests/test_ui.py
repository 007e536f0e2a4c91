"""`pcbench ui` serves the tracking store: a real MLflow server process, queried over HTTP."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

from pcbench.tracking import Tracker


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_ui_serves_the_store_with_its_runs(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker(uri, "ui-test")
    parent = tracker.start_run("search-x", {}, {"pcbench.kind": "search"})
    tracker.start_run("pc-1", {"method.name": "pc"}, {}, parent_run_id=parent)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "pcbench", "ui", "--tracking-uri", uri,
                               "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if _get(f"{base}/health")[0] == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, "pcbench ui exited"
            assert time.monotonic() < deadline, "the MLflow UI did not answer /health in 90 s"
            time.sleep(1)
        request = urllib.request.Request(
            f"{base}/api/2.0/mlflow/runs/search", method="POST",
            data=json.dumps({"experiment_ids": [tracker.experiment_id]}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            runs = json.loads(response.read())["runs"]
        names = sorted(r["info"]["run_name"] for r in runs)
        assert names == ["pc-1", "search-x"]
        assert _get(base)[0] == 200  # the UI page itself
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
