from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from imagebuild.errors import BuildInterrupted, CommandFailed, ToolMissing
from imagebuild.events import Reporter
from imagebuild.run import require_tools, run

pytestmark = pytest.mark.unit


def reporter() -> tuple[Reporter, io.StringIO]:
    buf = io.StringIO()
    return Reporter(stream=buf, verbose=True), buf


def test_logs_a_pasteable_command_and_captures_output():
    rep, buf = reporter()
    res = run(["printf", "%s\\n", "a b", "it's"], reporter=rep)
    assert res.stdout == "a b\nit's\n"
    assert "$ printf '%s\\n' 'a b' 'it'\"'\"'s'" in buf.getvalue()


def test_failure_says_exit_code_and_stderr_tail():
    with pytest.raises(CommandFailed) as e:
        run(["sh", "-c", "echo boom >&2; exit 3"])
    assert "failed with exit code 3" in str(e.value) and "boom" in str(e.value)
    assert e.value.returncode == 3


def test_not_found_is_tool_missing_with_purpose():
    with pytest.raises(ToolMissing, match="'no-such-tool-x' was not found.*needed to frobnicate"):
        run(["no-such-tool-x"], purpose="frobnicate")


def test_killed_by_signal_is_named():
    with pytest.raises(CommandFailed, match="killed by SIGKILL"):
        run(["sh", "-c", "kill -9 $$"])


def test_timeout_kills_and_says_so():
    t = time.monotonic()
    with pytest.raises(CommandFailed, match="timed out after 1s"):
        run(["sleep", "30"], timeout=1)
    assert time.monotonic() - t < 10


def test_clean_environment_and_no_stdin(monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "x")
    res = run(["sh", "-c", "echo $LANG; echo ${SECRET_TOKEN:-unset}; cat"])
    assert res.stdout.split() == ["C.UTF-8", "unset"]


def test_secret_is_masked_in_logs():
    rep, buf = reporter()
    run(["echo", "pw=hunter2"], reporter=rep, secret="hunter2")
    assert "hunter2" not in buf.getvalue() and "********" in buf.getvalue()


def test_require_tools_lists_every_missing_tool():
    with pytest.raises(ToolMissing) as e:
        require_tools({"sh": "run scripts", "nope-1": "do one", "nope-2": "do two"})
    assert "nope-1: needed to do one" in str(e.value) and "nope-2" in str(e.value) and "sh:" not in str(e.value)


def test_sigterm_stops_the_child_before_the_exception_leaves(tmp_path):
    """A SIGTERM to us while a command runs: the child is gone when BuildInterrupted propagates."""
    pidfile = tmp_path / "child.pid"
    script = textwrap.dedent(f"""
        import sys
        from imagebuild.run import run, signals_raise
        from imagebuild.errors import BuildInterrupted
        try:
            with signals_raise():
                run(["sh", "-c", "echo $$ > {pidfile}; exec sleep 300"])
        except BuildInterrupted as e:
            sys.exit(e.exit_code)
    """)
    p = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 60  # a loaded machine (a VM test beside us) starts Python slowly
    while not (pidfile.exists() and pidfile.read_text().strip()):
        assert time.monotonic() < deadline and p.poll() is None, "the command never started"
        time.sleep(0.05)
    child = int(pidfile.read_text())
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=20) == 128 + signal.SIGTERM
    assert not _running(child)


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan waits for a PID 1 that may be slow to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_build_interrupted_exit_codes():
    assert BuildInterrupted(signal.SIGINT).exit_code == 130
    assert BuildInterrupted(signal.SIGTERM).exit_code == 143


def test_a_command_from_a_niced_thread_runs_niced_in_its_own_scheduling_group():
    """Each command leads a session of its own, and an autogroup kernel schedules a session as a group
    weighed by the group's nice: the group must take the thread's nice, or nice means nothing against
    the guests (run._nice_session)."""
    import os
    import threading
    if not Path("/proc/self/autogroup").exists():
        pytest.skip("no autogroup scheduling in this kernel")
    seen: list[str] = []

    def niced() -> None:
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        seen.append(run(["sh", "-c", "cat /proc/self/autogroup; cut -d' ' -f19 /proc/self/stat"]).stdout)

    t = threading.Thread(target=niced)
    t.start()
    t.join()
    group, nice = seen[0].splitlines()
    assert group.endswith(" nice 19") and nice == "19"
    assert run(["cat", "/proc/self/autogroup"]).stdout.strip().endswith(" nice 0")  # unniced: untouched
