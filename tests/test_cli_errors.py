"""Bad input as a real process: one line naming the fix, exit code 2, no traceback, nothing
written, and Ray never started. tests/test_bad_inputs.py runs every other case in-process."""

import subprocess
import sys

import pytest
import torch

BAD_SPACE = "knobs:\n  method.tau: {type: float, low: 0.1, high: [\n"
UNKNOWN_KNOB = "knobs:\n  method.sharpness: {type: float, low: 0.1, high: 1.0}\n"

CASES = {
    "unknown method": (["search", "--method", "pcx"], "unknown method 'pcx': choose one of"),
    "unwritable results": (["search", "--method", "pc", "--results", "bad.yaml/results"],
                           "--results bad.yaml/results cannot be written"),
    "unreachable Ray cluster": (["search", "--method", "ce", "--address", "127.0.0.1:9"],
                                "cannot reach the Ray cluster at 127.0.0.1:9"),
    "a GPU on a CPU machine": (["run", "--method", "kd", "--gpus-per-trial", "0.5"],
                               "this machine has no CUDA GPU"),
}

@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, tmp_path):
    args, expected = CASES[case]
    if "GPU" in case and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "bad.yaml").write_text(BAD_SPACE)
    (tmp_path / "unknown.yaml").write_text(UNKNOWN_KNOB)
    before = sorted(p.name for p in tmp_path.iterdir())
    done = subprocess.run([sys.executable, "-m", "pcbench", *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no mlflow.db, no results
