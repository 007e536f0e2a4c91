"""A command's start: its MLflow store and Ray. A new local store creates its tables while Ray
starts; a store whose answer can be the user's mistake (a resume with nothing to resume) answers
before Ray starts. Run in a fresh process: Ray must not be up already (other tests share one)."""

import json
import subprocess
import sys

PROBE = r"""
import json, sys, threading
from pathlib import Path

import ray

from pcbench import workflow
from pcbench.errors import UserError
from pcbench.session import Session
from pcbench.tracking import Tracker

root = Path(sys.argv[1])
opened = []  # where each store was opened: its thread, and whether Ray was up by then
original = Tracker.__init__


def recording(self, *args, **kwargs):
    opened.append([threading.current_thread().name, ray.is_initialized()])
    original(self, *args, **kwargs)


Tracker.__init__ = recording


def session(**settings):
    return Session.open(results=root / "results", teachers=root / "teachers",
                        tracking_uri=f"sqlite:///{root / 'mlflow.db'}", **settings)


tracker, resumed = workflow._open_tracking_and_ray(session(), [], "probe", "search", "same")
fresh = {"experiment": tracker.experiment_id, "ray_up": ray.is_initialized()}
ray.shutdown()
try:
    workflow._open_tracking_and_ray(session(resume="latest"), [], "probe", "search", "same")
    refused = None
except UserError as error:
    refused = str(error)
print(json.dumps({"opened": opened, "fresh": fresh, "refused": refused,
                  "ray_up_after_refusal": ray.is_initialized()}))
"""


def test_a_new_store_opens_beside_rays_start_and_a_resume_is_refused_before_it(tmp_path):
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    (new_thread, _), (resume_thread, ray_up_then) = seen["opened"]
    # the new store's tables were created on the thread beside Ray's start, and Ray is up
    assert new_thread.startswith("pcbench-tracking"), seen
    assert seen["fresh"]["experiment"] and seen["fresh"]["ray_up"], seen
    # with --resume the store is read first, and its "nothing to resume" stops the command
    # before Ray starts
    assert resume_thread == "MainThread" and not ray_up_then, seen
    assert "no unfinished search" in seen["refused"], seen
    assert not seen["ray_up_after_refusal"], seen
