"""A search submitted as a Ray job to a real two-node cluster (two `ray start` nodes on this
machine, token auth), landing in Parquet and MLflow. The nodes are stopped by process group."""

import json
import os
import signal
import subprocess
import time

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from servers import free_ports

pytestmark = pytest.mark.ray

NODE_PORT_FLAGS = ("--node-manager-port", "--object-manager-port", "--metrics-export-port",
                   "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                   "--runtime-env-agent-port")


def _node_ports() -> list[str]:
    # Every port of its own, so the nodes never collide with the test session's Ray.
    return [f"{flag}={port}" for flag, port in zip(NODE_PORT_FLAGS, free_ports(len(NODE_PORT_FLAGS)))]


def _alive_nodes(dashboard: str, env) -> int:
    done = subprocess.run(["ray", "list", "nodes", "--address", dashboard, "--format", "json"],
                          capture_output=True, text=True, env=env, timeout=60)
    try:
        return sum(node["state"] == "ALIVE" for node in json.loads(done.stdout))
    except ValueError:  # the dashboard is not answering yet
        return 0


@pytest.fixture
def two_node_cluster(tmp_path):
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    gcs, dash, client = free_ports(3)
    dashboard = f"http://127.0.0.1:{dash}"
    common = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                  start_new_session=True)
    nodes = [subprocess.Popen(
        ["ray", "start", "--head", f"--port={gcs}", f"--dashboard-port={dash}",
         f"--ray-client-server-port={client}", "--num-cpus=1", "--disable-usage-stats",
         *_node_ports(), "--block"], **common)]
    try:
        deadline = time.monotonic() + 120
        while _alive_nodes(dashboard, env) < 1:
            assert time.monotonic() < deadline, "the head node did not come up"
            time.sleep(2)
        nodes.append(subprocess.Popen(
            ["ray", "start", f"--address=127.0.0.1:{gcs}", "--num-cpus=1", *_node_ports(),
             "--block"], **common))
        while _alive_nodes(dashboard, env) < 2:
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(2)
        yield dashboard, env
    finally:
        for node in reversed(nodes):  # `ray start --block` stops what it started on SIGTERM
            node.terminate()
            try:
                node.wait(timeout=60)
            finally:
                try:
                    os.killpg(node.pid, signal.SIGKILL)  # anything it left behind
                except ProcessLookupError:
                    pass


@pytest.mark.slow
def test_a_job_submitted_to_a_two_node_cluster_runs_a_search(two_node_cluster, tmp_path):
    dashboard, env = two_node_cluster
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = subprocess.run(
        ["ray", "job", "submit", "--address", dashboard, "--",
         "pcbench", "search", "--method", "ce", "--samples", "2", "--concurrent", "2",
         "--epochs", "2", "--experiment", "cluster", "--results", str(tmp_path / "results"),
         "--tracking-uri", uri, "--teachers", str(tmp_path / "teachers")],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = pd.read_parquet(tmp_path / "results" / "trials")
    assert len(trials) == 2 and set(trials.status) <= {"completed", "stopped"}
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("cluster").experiment_id])
    assert len(runs) == 3  # the search's parent run and one child per trial
