"""The QEMU guest agent of a running cell, and the wait for it: the checks' way into the guest (no
password, no SSH key, nothing added to the image)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from ..errors import BootTestFailed


class AgentGone(BootTestFailed):
    """The guest agent did not answer (not up yet, or the guest hung or died)."""


class BootStalled(BootTestFailed):
    """The guest's console went silent before its agent answered: under emulation, a guest kernel now and
    then stops early in its boot (seen here once in a day's builds, at 1.9 s of kernel time)."""

    def __init__(self, summary: str, tail: str) -> None:
        super().__init__(f"{summary}; last console lines:\n{tail}")
        self.summary = summary


class Agent:
    """The QEMU guest agent of a running domain."""

    def __init__(self, dom: Any) -> None:
        import libvirt_qemu
        self.dom = dom
        self._qmp = libvirt_qemu.qemuAgentCommand

    def call(self, command: str, args: dict[str, Any] | None = None, timeout: int = 10) -> Any:
        import libvirt
        msg = {"execute": command, **({"arguments": args} if args else {})}
        try:
            return json.loads(self._qmp(self.dom, json.dumps(msg), timeout, 0))["return"]
        except libvirt.libvirtError as exc:
            raise AgentGone(f"the guest agent stopped answering ({command}): {exc}") from None

    def start(self, argv: list[str]) -> int:
        """Start ``argv`` in the guest and return its PID at once (``wait`` collects it)."""
        return int(self.call("guest-exec", {"path": argv[0], "arg": argv[1:], "capture-output": True})["pid"])

    def wait(self, pid: int, argv: list[str], timeout: float = 120) -> tuple[int, str, str]:
        """The exit code, stdout and stderr of a command ``start`` began."""
        deadline = time.monotonic() + timeout
        pause = 0.05  # most checks' commands end within 0.1-0.3 s even under TCG: ask soon, then back off
        while time.monotonic() < deadline:
            st = self.call("guest-exec-status", {"pid": pid})
            if st.get("exited"):
                out = base64.b64decode(st.get("out-data", "")).decode("utf-8", "replace")
                err = base64.b64decode(st.get("err-data", "")).decode("utf-8", "replace")
                return int(st.get("exitcode", -1)), out, err
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        raise BootTestFailed(f"in-guest command did not finish within {timeout:.0f}s: {' '.join(argv)}")

    def exec(self, argv: list[str], timeout: float = 120) -> tuple[int, str, str]:
        return self.wait(self.start(argv), argv, timeout)


def console_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console output)"
    return "\n".join(text.splitlines()[-lines:])


def console_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def wait_for_agent(dom: Any, agent: Agent, deadline: float, console: Path, *, stall_seconds: int = 0) -> None:
    """Ping the agent until it answers; raise if the guest stops, the deadline passes, or (``stall_seconds``)
    its serial console has not grown for that long."""
    size, grew = console_size(console), time.monotonic()
    while time.monotonic() < deadline:
        now_size = console_size(console)
        if now_size != size:
            size, grew = now_size, time.monotonic()
        elif stall_seconds and time.monotonic() - grew > stall_seconds:
            raise BootStalled(f"the console was silent for {stall_seconds}s before the guest agent answered "
                              f"({size} bytes written)", console_tail(console, 12))
        if not dom.isActive():
            raise BootTestFailed("the guest stopped before its agent answered; last console lines:\n"
                                 + console_tail(console))
        try:
            agent.call("guest-ping", timeout=5)
            return
        except AgentGone:  # not connected yet: libvirt says so at once, so asking often costs nothing
            time.sleep(0.5)
    raise BootTestFailed("the guest agent did not answer before the boot timeout; last console lines:\n"
                         + console_tail(console))

