"""The one runner for external commands.

argv lists only (never a shell string), a clean environment, stdin from /dev/null, each command logged
as a line that can be pasted into a shell, output streamed into the build log, and failures explained:
"not found", "killed by SIGTERM", "timed out", or the exit code with the tail of stderr.
Children run in their own session, so an interrupt reaches them only through us: we stop them
(SIGTERM, then SIGKILL) before the exception leaves ``run``.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .errors import BuildInterrupted, CommandFailed, ToolMissing
from .events import NULL_REPORTER, Reporter

T = TypeVar("T")

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables worth passing through: proxies (users behind one need them) and libguestfs/libvirt knobs.
_PASS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
         "TMPDIR", "HOME", "LIBGUESTFS_BACKEND", "LIBGUESTFS_DEBUG", "LIBGUESTFS_TRACE")
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "PATH": _PATH}
    env.update({k: os.environ[k] for k in _PASS if k in os.environ})
    if extra:
        env.update(extra)
    return env


def quote(argv: Sequence[str | os.PathLike[str]]) -> str:
    return shlex.join(str(a) for a in argv)


def _describe(argv: list[str], rc: int, tail: str, timed_out: float | None) -> str:
    cmd = quote(argv)
    if timed_out is not None:
        what = f"timed out after {timed_out:.0f}s and was killed"
    elif rc < 0:
        what = f"was killed by {signal.Signals(-rc).name}"
    else:
        what = f"failed with exit code {rc}"
    msg = f"command {what}: {cmd}"
    if tail.strip():
        msg += "\n--- last lines of its output ---\n" + tail.rstrip()
    return msg


def stop_process_group(proc: subprocess.Popen[str], grace: float = STOP_GRACE_SECONDS) -> None:
    """SIGTERM the child's whole process group, then SIGKILL what is still there after ``grace``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _child_setup() -> None:
    """In the child, before exec."""
    _die_with_parent()
    _nice_session()


def _nice_session() -> None:
    """The child leads a session of its own (``start_new_session``), and with the kernel's autogroup
    scheduling (``kernel.sched_autogroup_enabled``) a new session is a scheduling group of its own,
    weighed by the group's nice (0), not the child's: a command started from a niced thread (the
    compression beside the boot test) would take a core from the guests as an equal. Measured here:
    the cells reached their agent after 65-68 s beside the compression and after 51-53 s without it.
    So the group takes the thread's nice too."""
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > 0:
        try:
            with open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))
        except OSError:  # no autogroup in this kernel: the child's own nice is what counts
            pass


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the build process dies (even by SIGKILL), so no tool
    outlives a killed build. (PR_SET_PDEATHSIG = 1; tied to the forking thread: run() from the main
    thread.)"""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def run(argv: Sequence[str | os.PathLike[str]], *, reporter: Reporter = NULL_REPORTER,
        check: bool = True, timeout: float | None = None, env: Mapping[str, str] | None = None,
        input: str | None = None, cwd: Path | None = None, purpose: str = "",
        log_output: bool = True, secret: str | None = None) -> Result:
    """Run ``argv``; return its output or raise ``CommandFailed``/``ToolMissing``.

    ``secret`` is masked wherever the command line or its output is logged.
    """
    args = [str(a) for a in argv]
    if not args:
        raise ValueError("empty argv")

    def mask(text: str) -> str:
        return text.replace(secret, "********") if secret else text

    reporter.log("$ " + mask(quote(args)) + (f"    # {purpose}" if purpose else ""))
    try:
        proc = subprocess.Popen(
            args, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
            env=clean_env(env), cwd=cwd, start_new_session=True, preexec_fn=_child_setup)
    except FileNotFoundError:
        raise ToolMissing(f"'{args[0]}' was not found on PATH"
                          + (f"; it is needed to {purpose}" if purpose else "")) from None

    out: list[str] = []
    err: list[str] = []
    tail: deque[str] = deque(maxlen=25)

    def pump(stream, sink: list[str], name: str) -> None:  # type: ignore[no-untyped-def]
        for line in stream:
            sink.append(line)
            tail.append(line)
            if log_output:
                reporter.log(f"  {name}: {mask(line.rstrip())}")
        stream.close()

    threads = [threading.Thread(target=pump, args=(proc.stdout, out, "out"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err, "err"), daemon=True)]
    for t in threads:
        t.start()
    timed_out: float | None = None
    try:
        if input is not None:
            assert proc.stdin is not None
            try:
                proc.stdin.write(input)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = timeout
            stop_process_group(proc, grace=2)
    except BaseException:
        # KeyboardInterrupt, BuildInterrupted, anything: the child must not outlive us.
        stop_process_group(proc)
        raise
    for t in threads:
        t.join(timeout=5)
    result = Result(args, proc.returncode, "".join(out), "".join(err), timed_out is not None)
    if check and (proc.returncode != 0 or timed_out is not None):
        raise CommandFailed(mask(_describe(args, proc.returncode, "".join(tail), timed_out)),
                            argv=args, returncode=proc.returncode, stderr_tail=mask("".join(tail)))
    return result


def require_tools(tools: Mapping[str, str]) -> None:
    """Check every tool before anything starts; ``tools`` maps a program to what it is needed for."""
    missing = [f"  {tool}: needed to {purpose}" for tool, purpose in tools.items()
               if shutil.which(tool, path=_PATH) is None]
    if missing:
        raise ToolMissing("missing host tools (install them, e.g. with ./inv setup):\n" + "\n".join(missing))


def tool_versions_of(commands: dict[str, Sequence[str]]) -> dict[str, str]:
    """``tool_version`` of each command, run side by side (each is a process start: ~60 ms)."""
    with ThreadPoolExecutor(max_workers=len(commands) or 1) as pool:
        return dict(zip(commands, pool.map(tool_version, commands.values()), strict=True))


def tool_version(argv: Sequence[str]) -> str:
    """First line of a tool's version output, or 'unknown' (asked once per process: the tools do not
    change during a build)."""
    return _tool_version(tuple(argv))


@functools.cache
def _tool_version(argv: tuple[str, ...]) -> str:
    try:
        res = run(argv, check=False, timeout=30, log_output=False)
    except ToolMissing:
        return "not installed"
    text = (res.stdout or res.stderr).strip().splitlines()
    return text[0] if text else "unknown"


# -- signals -------------------------------------------------------------------------------------

@contextmanager
def signals_raise() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into ``BuildInterrupted`` for the duration (main thread only)."""
    def handler(signum: int, _frame: object) -> None:
        raise BuildInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def call_interruptibly(fn: Callable[[], T], on_interrupt: Callable[[], None]) -> T:
    """Run a blocking library call (libguestfs, libvirt) in a worker thread.

    A C call blocks Python signal handlers until it returns; here the main thread keeps waiting in
    Python, so a signal is handled at once: ``on_interrupt`` breaks the call (e.g. kills the appliance),
    then the worker is joined and the interrupt re-raised.
    """
    box: dict[str, object] = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the main thread below
            box["error"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(timeout=0.2)
    except BaseException:
        on_interrupt()
        deadline = time.monotonic() + 30
        while t.is_alive() and time.monotonic() < deadline:
            t.join(timeout=0.2)
        raise
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]
