"""Bad input: one line naming the fix, exit code 2, no traceback, nothing written, no Ray."""

import subprocess
import sys

import pytest
import torch

BAD_SPACE = "knobs:\n  method.tau: {type: float, low: 0.1, high: [\n"
UNKNOWN_KNOB = "knobs:\n  method.sharpness: {type: float, low: 0.1, high: 1.0}\n"

CASES = {
    "unknown method": (["search", "--method", "pcx"], "unknown method 'pcx': choose one of"),
    "tap the model lacks": (["search", "--method", "pc", "--set", "method.tap=stage9"],
                            "tap 'stage9' does not exist in student cnn_small"),
    "space that does not parse": (["search", "--method", "pc", "--space", "bad.yaml"],
                                  "bad.yaml is not valid YAML"),
    "space with an unknown knob": (["search", "--method", "pc", "--space", "unknown.yaml"],
                                   "knob 'method.sharpness' is not a setting of method 'pc'"),
    "negative temperature": (["run", "--method", "kd", "--set", "method.temperature=-1"],
                             "method.temperature: Input should be greater than 0"),
    "zero temperature": (["search", "--method", "pc", "--set", "method.temperature=0"],
                         "method.temperature: Input should be greater than 0"),
    "unknown data set": (["search", "--method", "pc", "--dataset", "cifar1000"],
                         "unknown data set 'cifar1000'"),
    "unwritable results": (["search", "--method", "pc", "--results", "bad.yaml/results"],
                           "--results bad.yaml/results cannot be written"),
    "zero samples": (["search", "--method", "pc", "--samples", "0"],
                     "--samples 0 runs nothing; give 1 or more"),
    "malformed --set": (["run", "--method", "pc", "--set", "tau"], "is not key=value"),
    "more CPUs than the machine": (["search", "--method", "ce", "--cpus-per-trial", "4096"],
                                   "--cpus-per-trial 4096.0 exceeds this machine's"),
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
