"""The cluster launchers are secure by default: Ray token auth on every node, its token from a
file or a Kubernetes Secret that is never committed; MLflow's basic auth with generated
credentials (a real server, started as the AWS/GCP head starts it, accepts the generated login
and refuses any other); NetworkPolicies that admit each pod only where it must go; every secret
from a Secret that cluster/README.md creates. docs/cluster.md describes the result."""

import glob
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest
import yaml
from servers import free_ports

CLUSTER = Path(__file__).resolve().parents[1] / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHERS = ["aws.yaml", "gcp.yaml"]
TOKEN_SECRET = {"name": "pcbench-ray-token", "key": "token"}


def _manifest(name: str) -> list[dict]:
    return list(yaml.safe_load_all((KUBERAY / name).read_text()))


def _ray_pods(manifest: dict):
    """(labels, pod spec) of the head, each worker group and a RayJob's submitter."""
    spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
    for template in [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
        yield template["metadata"]["labels"], template["spec"]
    if "submitterPodTemplate" in manifest["spec"]:
        template = manifest["spec"]["submitterPodTemplate"]
        yield template["metadata"]["labels"], template["spec"]


# --- Ray token auth ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAUNCHERS)
def test_the_launchers_start_every_node_with_token_auth_and_a_private_token(name):
    config = yaml.safe_load((CLUSTER / name).read_text())
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]  # every process, every node
    # the user's own token file (never this repository's), at Ray's default path on each node
    assert config["file_mounts"] == {"/home/ray/.ray/auth_token": "~/.ray/auth_token"}
    starts = [c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"]
              if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("chmod 600 ~/.ray/auth_token && ") for c in starts)
    text = (CLUSTER / name).read_text()
    assert "RAY_AUTH_TOKEN=" not in text and "disabled" not in text


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_every_ray_pod_and_the_submitter_take_the_token_from_the_secret(name):
    [manifest] = _manifest(name)
    pods = list(_ray_pods(manifest))
    assert len(pods) == (3 if manifest["kind"] == "RayJob" else 2)
    for _, pod in pods:
        for container in pod["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"] == {"name": "RAY_AUTH_MODE", "value": "token"}
            assert env["RAY_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": TOKEN_SECRET}


_PROBE = """
import sys, urllib.error, urllib.request
from pathlib import Path
import ray
context = ray.init(address="local", num_cpus=1, include_dashboard=True, dashboard_port=int(sys.argv[1]),
                   _temp_dir=sys.argv[2])
token = (Path.home() / ".ray" / "auth_token").read_text().strip()
for header in ({}, {"Authorization": "Bearer " + "0" * 64}, {"Authorization": "Bearer " + token}):
    request = urllib.request.Request(f"http://{context.dashboard_url}/api/jobs/", headers=header)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            print(response.status)
    except urllib.error.HTTPError as error:
        print(error.code)
ray.shutdown()
"""


@pytest.mark.ray
def test_ray_started_as_the_launchers_start_it_refuses_a_client_without_the_token():
    """RAY_AUTH_MODE as the containers get it, the token where the launchers mount it (under the
    node's home), readable by its user alone: the job API refuses no token and a wrong one."""
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    mode = next(o for o in config["docker"]["run_options"] if "RAY_AUTH_MODE" in o).split("=")[1]
    [target] = config["file_mounts"]
    with tempfile.TemporaryDirectory(prefix="pcb-ray-") as home:  # short: Ray's socket paths
        token = Path(home) / Path(target).relative_to("/home/ray")
        token.parent.mkdir()
        token.write_text(os.urandom(32).hex())
        token.chmod(0o600)  # as the start commands leave it
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(HOME=home, RAY_AUTH_MODE=mode)
        [port] = free_ports()
        probe = subprocess.run([sys.executable, "-c", _PROBE, str(port), f"{home}/t"], env=env,
                               capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0, probe.stderr[-3000:]
    assert probe.stdout.split() == ["401", "403", "200"], probe.stdout + probe.stderr[-3000:]


# --- MLflow's basic auth -----------------------------------------------------------------------

def _postgres() -> bool:
    return bool(shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb"))


def _launcher_command(state: Path, port: int, pg_port: int) -> list[str]:
    """aws.yaml's MLflow command, with this test's folder, ports and artifacts: its settings."""
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    [line] = [c for c in config["head_start_ray_commands"] if "mlflow_server.py" in c]
    words = shlex.split(line)
    assert words[:3] == ["python", "/home/ray/pcbench/cluster/mlflow_server.py", "start"]
    words[:2] = [sys.executable, str(CLUSTER / "mlflow_server.py")]
    words[words.index("--state") + 1] = str(state)
    words[words.index("--artifacts") + 1] = str(state.parent / "artifacts")
    if _postgres():
        words += ["--pg-port", str(pg_port)]
    else:  # a developer's machine without PostgreSQL's server; CI has it (the machine image)
        assert not os.environ.get("CI"), "PostgreSQL's server (initdb) is missing"
        words.remove("--postgres")
        words += ["--backend-store-uri", f"sqlite:///{state.parent / 'mlflow.db'}"]
    return words + ["--port", str(port), "--workers", "1"]


def _get(url: str, auth: tuple[str, str] | None = None) -> int:
    headers = {"Authorization": "Basic " + b64encode(":".join(auth).encode()).decode()} if auth else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as error:
        return error.code


def _read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in shlex.split(path.read_text()))


def _cmdlines(pid: int) -> list[str]:
    """The command lines of `pid` and everything under it."""
    seen, lines = [pid], []
    while seen:
        current = seen.pop()
        try:
            lines.append(Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ").decode())
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        seen += map(int, children)
    return lines


@pytest.fixture
def head_home():
    """A home for the head's state. Run as root (CI), PostgreSQL runs as the user postgres, which
    must traverse to its data folder: pytest's own folders are closed to it."""
    home = Path(tempfile.mkdtemp(prefix="pcb-head-"))
    home.chmod(0o711)
    yield home
    shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_mlflow_started_as_the_head_starts_it_accepts_the_generated_login_and_refuses_others(
        head_home, monkeypatch):
    state = head_home / "mlflow"
    port, pg_port = free_ports(2)
    command = _launcher_command(state, port, pg_port)
    url = f"http://127.0.0.1:{port}"
    api = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        started = subprocess.run(command, capture_output=True, text=True, timeout=400)
        assert started.returncode == 0, started.stdout + started.stderr
        login = _read_env(state / "client.env")
        assert login["MLFLOW_TRACKING_URI"] == url and login["MLFLOW_TRACKING_USERNAME"] == "admin"
        password = login["MLFLOW_TRACKING_PASSWORD"]
        assert len(password) >= 32
        # secrets readable by their user alone; the folder listable by no one else
        assert stat.S_IMODE(state.stat().st_mode) == (0o711 if os.geteuid() == 0 else 0o700)
        for name in ("secrets.json", "basic_auth.ini", "client.env", "server.log"):
            assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
        assert _get(api) == 401
        assert _get(api, ("admin", "x" * 48)) == 401
        assert _get(api, ("admin", password)) == 200
        assert _get(f"{url}/health") == 200  # unprotected: pcbench's pre-flight check reads it
        # no secret on any command line of the server's processes
        pid = int((state / "mlflow.pid").read_text())
        secrets = [password, *json.loads((state / "secrets.json").read_text()).values()]
        assert not [c for c in _cmdlines(pid) for s in secrets if s in c]
        # the driver's client records with the login from client.env, and without it cannot
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        for name in [k for k in os.environ if k.startswith("MLFLOW_")]:
            monkeypatch.delenv(name)
        for name, value in login.items():
            monkeypatch.setenv(name, value)
        client = MlflowClient(url)
        run = client.create_run(client.create_experiment("auth-probe"))
        client.log_metric(run.info.run_id, "val_acc", 0.5)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        with pytest.raises(MlflowException, match="401|Unauthorized|credentials"):
            client.log_metric(run.info.run_id, "val_acc", 0.6)
        if _postgres():
            import psycopg

            db_password = json.loads((state / "secrets.json").read_text())["db_password"]
            with psycopg.connect(host="127.0.0.1", port=pg_port, user="mlflow", dbname="mlflow",
                                 password=db_password) as db:
                assert db.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
                tables = {r[0] for r in db.execute("SELECT tablename FROM pg_tables")}
                assert {"runs", "metrics", "users", "alembic_version_auth"} <= tables
            with pytest.raises(psycopg.OperationalError):  # no login without the password
                psycopg.connect(host="127.0.0.1", port=pg_port, user="mlflow", dbname="mlflow",
                                password="wrong-password", connect_timeout=10)
        # a second `ray up` restarts MLflow: same secrets, same users, the run kept
        again = subprocess.run(command, capture_output=True, text=True, timeout=400)
        assert again.returncode == 0, again.stdout + again.stderr
        assert _read_env(state / "client.env") == login
        assert _get(api, ("admin", password)) == 200 and _get(api) == 401
    finally:
        subprocess.run([sys.executable, str(CLUSTER / "mlflow_server.py"), "stop", "--state", str(state)],
                       timeout=120)


# --- Kubernetes: NetworkPolicy and Secrets -----------------------------------------------------

def _admitted(policies: list[dict], source: dict, target: dict, port: int) -> bool:
    """NetworkPolicy ingress, as a plugin that enforces it decides (same namespace, TCP): a pod
    that no policy selects admits everything; else some rule of a selecting policy must match
    the source's labels (a namespaceSelector admits any namespace) and the port."""
    def selects(selector, labels):
        return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())

    selecting = [p for p in policies if selects(p["spec"]["podSelector"], target)]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            if (not ports or port in ports) and any(
                    selects(peer.get("podSelector", {}), source) for peer in rule.get("from", [])):
                return True
    return False


def test_the_network_policies_admit_each_pod_only_where_it_must_go():
    policies = _manifest("networkpolicy.yaml")
    assert {p["kind"] for p in policies} == {"NetworkPolicy"}
    assert all(p["spec"]["policyTypes"] == ["Ingress"] for p in policies)
    # the labels the policies name are the ones the pods carry
    labels = {tuple(sorted(lbl.items())) for name in ("raycluster.yaml", "rayjob.yaml")
              for lbl, _ in _ray_pods(_manifest(name)[0])}
    assert labels == {(("app", "pcbench-ray"),), (("app", "pcbench-ray-submitter"),)}
    mlflow = {(d["kind"], d["metadata"]["name"]): d for d in _manifest("mlflow.yaml")}
    assert mlflow["Deployment", "pcbench-mlflow"]["spec"]["template"]["metadata"]["labels"] == \
        {"app": "pcbench-mlflow"}
    assert mlflow["StatefulSet", "pcbench-mlflow-db"]["spec"]["template"]["metadata"]["labels"] == \
        {"app": "pcbench-mlflow-db"}

    ray, mlf, db = {"app": "pcbench-ray"}, {"app": "pcbench-mlflow"}, {"app": "pcbench-mlflow-db"}
    submitter, operator = {"app": "pcbench-ray-submitter"}, {"app.kubernetes.io/name": "kuberay-operator"}
    other = {"app": "someone-else"}
    gcs, client, dashboard, raylet = 6379, 10001, 8265, 40000
    for port in (gcs, client, dashboard, raylet):  # the Ray pods among themselves
        assert _admitted(policies, ray, ray, port)
        assert not _admitted(policies, other, ray, port)
        assert not _admitted(policies, mlf, ray, port)
    for source in (submitter, operator):  # job submission and status: the dashboard only
        assert _admitted(policies, source, ray, dashboard)
        assert not _admitted(policies, source, ray, gcs) and not _admitted(policies, source, ray, client)
    assert _admitted(policies, ray, mlf, 5000)
    for source in (other, submitter, operator, db):
        assert not _admitted(policies, source, mlf, 5000)
    assert _admitted(policies, mlf, db, 5432)
    for source in (ray, other, submitter):
        assert not _admitted(policies, source, db, 5432)


def test_every_secret_comes_from_a_kubernetes_secret_that_the_readme_creates():
    """No Secret (no value) is committed; each (Secret, key) the manifests read is created by a
    `kubectl create secret` line of cluster/README.md, every password generated there."""
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if "secretKeyRef" in node:
                refs.add((node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in KUBERAY.glob("*.yaml"):
        docs = list(yaml.safe_load_all(path.read_text()))
        assert "Secret" not in {d["kind"] for d in docs}, path.name
        walk(docs)
    assert refs == {("pcbench-ray-token", "token"), ("pcbench-mlflow", "admin-password"),
                    ("pcbench-mlflow", "flask-secret-key"), ("pcbench-mlflow", "db-password"),
                    ("pcbench-mlflow", "artifacts")}
    readme = (CLUSTER / "README.md").read_text().replace("\\\n", " ")
    created = set()
    for line in readme.splitlines():
        if match := re.search(r"kubectl create secret generic ([\w-]+)", line):
            for key, value in re.findall(r"--from-literal=([\w-]+)=(\$\(openssl rand -hex \d+\)|\S+)", line):
                created.add((match.group(1), key))
                assert key == "artifacts" or value.startswith("$(openssl rand"), key  # a bucket: no secret
    assert refs <= created
