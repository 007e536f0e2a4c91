"""The cluster files load and carry what Ray needs: the launcher YAMLs validate against the
autoscaler schema the installed Ray ships; the KubeRay manifests match the installed Ray."""

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_yaml_validates_against_rays_schema(name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    schema_path = os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")
    jsonschema.validate(config, json.loads(open(schema_path).read()))
    validate_config(prepare_config(config))  # what `ray up` checks after filling defaults
    head = " ".join(config["head_start_ray_commands"])
    assert "ray start --head" in head and "--dashboard-host=127.0.0.1" in head
    # MLflow through cluster/mlflow_server.py (basic auth, tests/test_cluster_auth.py), its
    # store in PostgreSQL, on the head's loopback (the script's default host)
    [mlflow] = [c for c in config["head_start_ray_commands"] if "mlflow_server.py" in c]
    assert "cluster/mlflow_server.py start --state ~/mlflow --postgres" in mlflow and "--host" not in mlflow
    gpu_types = [t for t in config["available_node_types"] if t != config["head_node_type"]]
    assert gpu_types and config["docker"]["image"]


def _pod_specs(manifest):
    spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
    yield spec["headGroupSpec"]["template"]["spec"]
    for group in spec["workerGroupSpecs"]:
        yield group["template"]["spec"]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests_carry_what_ray_needs(name):
    manifest = yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
    assert manifest["apiVersion"] == "ray.io/v1"
    spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in head["ports"]} >= {6379, 8265, 10001}
    for pod in _pod_specs(manifest):
        shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
        assert shm, "a memory-backed /dev/shm volume"
        for container in pod["containers"]:
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert mounts[shm[0]["name"]] == "/dev/shm"
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
            assert "secretKeyRef" in env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]
    if manifest["kind"] == "RayJob":
        assert manifest["spec"]["entrypoint"].startswith("pcbench benchmark suites/cifar100.yaml")


def test_dockerfile_uses_the_installed_ray_version():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-", dockerfile, re.M)
    assert f'ray[default,tune,train]=={ray.__version__}' in dockerfile


def test_the_image_has_what_the_launchers_mlflow_needs():
    """PostgreSQL's server, the `cluster` extra (mlflow[auth]: Flask-WTF; psycopg: the driver of
    the launchers' `postgresql+psycopg://` stores) and the script that starts them. The test
    extra carries the same packages, so tests/test_cluster_auth.py runs with the image's."""
    import tomllib

    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert "apt-get install -y --no-install-recommends postgresql" in dockerfile
    assert 'pip install --no-cache-dir -e ".[cluster]"' in dockerfile
    assert "COPY --chown=ray:users cluster/mlflow_server.py ./cluster/" in dockerfile
    pyproject = tomllib.loads((CLUSTER.parent / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    assert any(r.startswith("mlflow[auth]") for r in extras["cluster"])
    assert any(r.startswith("psycopg[binary]") for r in extras["cluster"])
    assert set(extras["cluster"]) <= set(extras["test"])


def test_mlflow_manifest_runs_the_launchers_server_on_postgresql():
    manifest = (CLUSTER / "kuberay" / "mlflow.yaml").read_text()
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(manifest)}
    mlflow = docs["Deployment", "pcbench-mlflow"]["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["command"][:3] == ["python", "/home/ray/pcbench/cluster/mlflow_server.py", "serve"]
    env = {e["name"]: e for e in mlflow["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql+psycopg://mlflow:$(DB_PASSWORD)@pcbench-mlflow-db:5432/")
    db = docs["StatefulSet", "pcbench-mlflow-db"]["spec"]["template"]["spec"]["containers"][0]
    assert {p["containerPort"] for p in db["ports"]} == {5432}
    assert {d["spec"]["type"] for (kind, _), d in docs.items() if kind == "Service"} == {"ClusterIP"}
