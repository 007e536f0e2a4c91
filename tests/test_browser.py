"""The UI as a person sees it: headless Chromium renders the MLflow UI of a finished search and
the leaderboard page, and the screenshots are kept.

Skipped when no Chromium is installed (`chromium` or `chromium-browser` on PATH), except under
CI (CI=true), where that is a failure: `.ci/run` installs it. Screenshots and rendered DOMs go
to $PCBENCH_TEST_ARTIFACTS (default: <repo>/test-artifacts/browser/)."""

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from servers import free_ports, http_server
from typer.testing import CliRunner

from pcbench.cli import app

pytestmark = [pytest.mark.browser, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "pcbench-browser"
WINDOW = (1400, 1000)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium binary; first among the tests' fixtures, so a skip costs no search."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        reason = ("no Chromium binary (`chromium` or `chromium-browser`) on PATH; "
                  "install it (Debian: apt-get install chromium) to run the browser tests")
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{reason}; under CI the browser tests must run (.ci/run installs it)")
        pytest.skip(reason)
    return found


@pytest.fixture(scope="session")
def artifacts() -> Path:
    folder = Path(os.environ.get("PCBENCH_TEST_ARTIFACTS") or REPO / "test-artifacts" / "browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def finished(chromium, tmp_path_factory, teacher_store, local_ray):
    """A real search (two methods, two trials each, two epochs) and its report."""
    root = tmp_path_factory.mktemp("browser")
    space = {"results": root / "results", "uri": f"sqlite:///{root / 'mlflow.db'}",
             "report": root / "report"}
    runner = CliRunner()
    result = runner.invoke(app, [
        "search", "--method", "ce", "--method", "kd", "--samples", "2", "--concurrent", "2",
        "--epochs", "2", "--seed", "3", "--experiment", EXPERIMENT,
        "--results", str(space["results"]), "--tracking-uri", space["uri"],
        "--teachers", str(teacher_store.root)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    result = runner.invoke(app, ["report", "--results", str(space["results"]),
                                 "--out", str(space["report"])])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return space


def _browse(binary: str, url: str, profile: Path, *action: str, window=WINDOW,
            timeout_s: float = 90) -> str:
    """One headless Chromium run; JavaScript gets 15 s of virtual time (paused while requests
    are pending) before the DOM is dumped or the screenshot taken. Returns stdout."""
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--no-default-browser-check", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}",
               "--virtual-time-budget=15000", *action, url]
    browser = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = browser.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(browser.pid, signal.SIGKILL)  # Chromium and its helper processes
        browser.communicate()
        raise AssertionError(f"chromium did not finish {url} in {timeout_s} s") from None
    assert browser.returncode == 0, f"chromium exited {browser.returncode}: {err[-2000:]}"
    return out


def _text(dom: str) -> str:
    """What the page says: the DOM without scripts, styles and tags."""
    dom = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.DOTALL | re.IGNORECASE)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", dom))


def _screenshot(binary: str, url: str, profile: Path, path: Path, window=WINDOW):
    """Take it and check it is a PNG of the window's size that shows something: many colours,
    a fair share of pixels that are not background. Returns the image (RGB)."""
    from PIL import Image

    path.unlink(missing_ok=True)
    _browse(binary, url, profile, f"--screenshot={path}", window=window)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000, f"{path}: {path.stat().st_size} bytes, likely blank"
    with Image.open(path) as image:
        image = image.convert("RGB")
    assert image.size == window
    counts = sorted(image.getcolors(maxcolors=1 << 24), reverse=True)
    assert len(counts) > 50, f"{path}: only {len(counts)} colours"
    background = counts[0][0] / (window[0] * window[1])
    assert background < 0.97, f"{path}: {background:.0%} of the page is one colour"
    return image


def test_mlflow_ui_shows_the_search_and_its_trial_runs(chromium, finished, artifacts, tmp_path,
                                                       monkeypatch):
    client = MlflowClient(finished["uri"])
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    parents = [r.info.run_name for r in runs if r.data.tags.get("pcbench.kind") == "search"]
    trials = [r.info.run_name for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(trials) == 4
    assert all(re.fullmatch(r"(ce|kd)-[\w-]+", name) for name in trials)  # a cohort member: <trial>-m<i>
    # The same UI with fewer server processes: one web worker, no job runner (on 2 cores the
    # default 4 workers and job consumers take ~30 s to start, instead of ~10 s).
    monkeypatch.setenv("MLFLOW_WORKERS", "1")
    monkeypatch.setenv("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    [port] = free_ports()
    command = [sys.executable, "-m", "pcbench", "ui", "--tracking-uri", finished["uri"],
               "--port", str(port)]
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    log = tmp_path / "ui.log"
    with http_server(command, port, log=log) as base:
        # The page `pcbench ui` points at: the experiment's runs in the training view, every
        # run listed flat by validation accuracy.
        printed = re.search(rf"{EXPERIMENT}: (\S+)", log.read_text())
        assert printed, f"`pcbench ui` printed no runs page for {EXPERIMENT}: {log.read_text()}"
        url = printed.group(1)
        assert url.startswith(f"{base}/#/experiments/{experiment.experiment_id}/runs?")
        assert "workflowType=machine_learning" in url
        for _ in range(2):  # a loaded machine may still be fetching the first time
            dom = _browse(chromium, url, tmp_path / "profile", "--dump-dom")
            shown = _text(dom)
            if all(name in shown for name in [EXPERIMENT, *parents, *trials]):
                break
        (artifacts / "mlflow-runs.dom.html").write_text(dom)
        assert EXPERIMENT in shown, "the experiment's name is not on the page"
        assert "Run Name" in shown and "matching runs" in shown, "no runs table on the page"
        missing = [name for name in [*parents, *trials] if name not in shown]
        assert not missing, f"runs not in the runs table: {missing}"
        # the training view's tabs, not the GenAI view's overview
        assert "Model registry" in shown and "Runs" in shown
        genai = [word for word in ("Token usage", "Evaluations", "Sessions") if word in shown]
        assert not genai, f"the GenAI view is showing: {genai}"
        _screenshot(chromium, url, tmp_path / "profile", artifacts / "mlflow-runs.png")


def test_leaderboard_page_shows_the_table_and_its_plots(chromium, finished, artifacts, tmp_path):
    from pcbench.results.plots import colours

    board = pd.read_parquet(finished["report"] / "leaderboard.parquet")
    methods = sorted(board.method)
    assert methods  # at least one method completed a trial
    url = (finished["report"] / "leaderboard.html").as_uri()
    dom = _browse(chromium, url, tmp_path / "profile", "--dump-dom")
    (artifacts / "leaderboard.dom.html").write_text(dom)
    table = re.search(r'<table[^>]*class="[^"]*board[^"]*".*?</table>', dom, flags=re.DOTALL)
    assert table, "no leaderboard table in the page"
    assert all(f"<td>{m}</td>" in table.group(0) for m in methods)
    for kind in ("val-acc", "search-progress"):  # a search's board: validation accuracy
        figure = re.search(rf'<figure class="plot" data-plot="{kind}".*?</figure>', dom, flags=re.DOTALL)
        assert figure, f"no {kind} figure"
        assert figure.group(0).count("<svg") == 1 and "<figcaption>" in figure.group(0)
        labels = re.findall(r"<text\b[^>]*>([^<]*)</text>", figure.group(0))
        assert set(methods) <= {label.strip() for label in labels}, f"{kind}: {labels}"
    image = _screenshot(chromium, url, tmp_path / "profile", artifacts / "leaderboard.png")
    # The figures are drawn: each method's colour (the same in both figures) fills pixels.
    searched = set(pd.read_parquet(finished["results"] / "trials").method)
    found = {colour for _, colour in image.getcolors(maxcolors=1 << 24)}
    for method, hex_colour in colours(set(methods) | searched).items():
        rgb = tuple(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
        assert rgb in found, f"no pixel of {method}'s bar colour {hex_colour} on the page"
