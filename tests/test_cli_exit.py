"""The pcbench executable's quick exit (cli.exit_now): the exit status as sys.exit gives it, and
nothing cut short: threads still working finish, exit handlers run, output is flushed."""

import subprocess
import sys

import pytest

import pcbench.cli

PROGRAM = """
import atexit, concurrent.futures, sys, time
from pcbench.cli import exit_now
class Probe:  # finalised only by the interpreter's teardown, which exit_now skips
    def __del__(self):
        print("torn down")
probe = Probe()
pool = concurrent.futures.ThreadPoolExecutor(1)
pool.submit(lambda: (time.sleep(0.5), open(sys.argv[1], "w").write("written")))
atexit.register(lambda: print("exit handler ran"))
print("unflushed", end="")
exit_now(int(sys.argv[2]) if sys.argv[2].isdigit() else sys.argv[2])
"""


def test_exit_now_finishes_the_work_in_flight_and_keeps_the_status(tmp_path):
    for code, status in (("0", 0), ("3", 3), ("a message", 1)):
        probe = tmp_path / f"probe-{status}"
        done = subprocess.run([sys.executable, "-c", PROGRAM, str(probe), code], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == status
        assert probe.read_text() == "written"
        assert done.stdout.startswith("unflushed") and "exit handler ran" in done.stdout
        assert "torn down" not in done.stdout
        assert ("a message" in done.stderr) == (code == "a message")


def test_the_executable_exits_with_the_commands_status(tmp_path):
    usage = subprocess.run([sys.executable, "-m", "pcbench", "no-such-command"], capture_output=True,
                           text=True, timeout=120, cwd=tmp_path)
    assert usage.returncode == 2 and "No such command" in usage.stdout + usage.stderr
    helped = subprocess.run([sys.executable, "-m", "pcbench", "--help"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert helped.returncode == 0 and "benchmark" in helped.stdout


@pytest.mark.parametrize(("argv", "status"), [(["--help"], 0), (["no-such-command"], 2)])
def test_the_executable_ends_through_exit_now(monkeypatch, argv, status):
    ended = []
    monkeypatch.setattr(pcbench.cli, "exit_now", ended.append)
    monkeypatch.setattr(sys, "argv", ["pcbench", *argv])
    pcbench.cli.main()
    assert ended == [status]
