"""pcbench installed like a library: the wheel built from this checkout carries the search spaces
and suites inside the package, and a fresh environment holding only that wheel (torch, Ray and
the rest from the system) searches, plans and lists suites from an empty folder."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# What the build reads. Built from a copy, so the build writes nothing into the checkout.
BUILD_INPUTS = ("pyproject.toml", "README.md", "pcbench", "search_spaces", "suites")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("setuptools") is None,
                                reason="no setuptools to build the wheel with (offline: no build isolation)")


def _build_wheel(work: Path) -> Path:
    source, dist = work / "source", work / "dist"
    source.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():  # the package's links to search_spaces/ and suites/ stay links
            shutil.copytree(REPO / name, source / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-index",
                    "--no-build-isolation", "-q", "-w", str(dist)], check=True)
    (wheel,) = dist.glob("pcbench-*.whl")
    return wheel


def _install(wheel: Path, venv: Path) -> None:
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True)
    # --ignore-installed: never touch the editable pcbench of the system's site-packages
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "--no-deps", "--no-index",
                    "--ignore-installed", "-q", str(wheel)], check=True)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, venv, an empty working folder, the environment to run commands in)."""
    work = tmp_path_factory.mktemp("package")
    wheel = _build_wheel(work)
    _install(wheel, work / "venv")
    empty = work / "empty"
    empty.mkdir()
    # PYTHONPATH would put a checkout before the wheel
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return wheel, work / "venv", empty, env


def _pcbench(installed, *args: str) -> str:
    _, venv, empty, env = installed
    done = subprocess.run([venv / "bin" / "pcbench", *args], cwd=empty, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_wheel_carries_every_search_space_and_suite(installed):
    names = set(zipfile.ZipFile(installed[0]).namelist())
    for folder in ("search_spaces", "suites"):
        shipped = {f"pcbench/{folder}/{path.name}" for path in (REPO / folder).glob("*.yaml")}
        assert shipped and shipped <= names, sorted(shipped - names)


def test_the_environment_imports_the_wheel_not_the_checkout(installed):
    _, venv, empty, env = installed
    done = subprocess.run([venv / "bin" / "python", "-c",
                           "import pcbench.spaces, pcbench.suite; "
                           "print(pcbench.__file__, pcbench.spaces.SPACES_DIR, pcbench.suite.SUITES_DIR)"],
                          cwd=empty, env=env, capture_output=True, text=True, check=True)
    package, spaces, suites = map(Path, done.stdout.split())
    assert package.is_relative_to(venv) and not package.is_relative_to(REPO)
    assert spaces == package.parent / "search_spaces" and (spaces / "training.yaml").is_file()
    assert suites == package.parent / "suites" and (suites / "demo.yaml").is_file()


def test_search_plan_uses_the_bundled_spaces(installed):
    (entry,) = json.loads(_pcbench(installed, "search", "--method", "kd", "--samples", "2",
                                   "--epochs", "1", "--dry-run", "--json"))
    assert set(entry["knobs"]) == {"method.temperature", "method.w_kd", "method.w_ce",
                                   "train.lr", "train.weight_decay"}


def test_a_users_space_gets_the_bundled_training_and_kd_term_blocks(installed):
    empty = installed[2]
    (empty / "my_at.yaml").write_text("knobs:\n  method.weight: {type: float, low: 10.0, high: 5000.0}\n")
    try:
        (entry,) = json.loads(_pcbench(installed, "search", "--method", "at+kd", "--space", "my_at.yaml",
                                       "--samples", "2", "--epochs", "1", "--dry-run", "--json"))
    finally:
        (empty / "my_at.yaml").unlink()
    assert set(entry["knobs"]) == {"method.weight", "method.w_kd", "method.kd_temperature",
                                   "train.lr", "train.weight_decay"}


def test_suites_lists_the_bundled_suites_and_benchmark_plans_one(installed):
    listing = _pcbench(installed, "suites")
    for name in ("demo", "cifar100", "imagenet"):
        assert f" {name} " in listing
    folder = Path(listing.split("files: ")[1].split("/<suite>.yaml")[0])
    assert folder.is_relative_to(installed[1])
    plan = json.loads(_pcbench(installed, "benchmark", "demo", "--method", "kd",  # by its name
                               "--dry-run", "--json"))
    assert [(entry["method"], entry["dataset"]) for entry in plan] == [("kd", "digits")]
