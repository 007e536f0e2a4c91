"""A search logging to a real `mlflow server` over HTTP, read back through MlflowClient."""

import sys

import pytest
import yaml
from mlflow.tracking import MlflowClient
from servers import free_ports, http_server
from typer.testing import CliRunner

from pcbench.cli import app

pytestmark = pytest.mark.ray


@pytest.fixture
def mlflow_server(tmp_path):
    [port] = free_ports()
    with http_server([sys.executable, "-m", "mlflow", "server",
                      "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
                      "--artifacts-destination", str(tmp_path / "artifacts"),
                      "--host", "127.0.0.1", "--port", str(port)], port) as uri:
        yield uri


def test_search_logs_to_a_tracking_server(mlflow_server, tmp_path, teacher_store, local_ray):
    result = CliRunner().invoke(app, [
        "search", "--method", "kd", "--samples", "2", "--epochs", "2", "--experiment", "remote",
        "--tracking-uri", mlflow_server, "--results", str(tmp_path / "results"),
        "--teachers", str(teacher_store.root)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("remote")
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.data.tags.get("pcbench.kind") == "search"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and len(children) == 2
    for child in children:
        history = client.get_metric_history(child.info.run_id, "val_acc")
        assert [m.step for m in history] == list(range(1, len(history) + 1))
        config = yaml.safe_load(open(client.download_artifacts(
            child.info.run_id, "config.yaml", str(tmp_path))))
        assert config["method"]["name"] == "kd"
        assert config["teacher_sha256"] == child.data.tags["pcbench.teacher_sha256"]
    # No SQLite store beside the results: the optuna study went to the results folder.
    assert (tmp_path / "results" / "optuna.db").exists()
