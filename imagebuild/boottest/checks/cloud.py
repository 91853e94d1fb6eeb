"""The cloud contract, read for real (docs/cloud.md): with the seed a cloud would attach, cloud-init ran
cleanly from the datasource and instance id the seed carries, the guest took the metadata's hostname,
ran the user-data once, grew / into the larger disk, and the default user logs in over SSH from the
host with the key only the seed carried, has passwordless sudo, and is offered no password login
(unless oVirt asked for it). With no seed, cloud-init gets out of the way and / still grows. The same
clone booted again keeps its host keys and does not run the user-data again.

What is read inside the guest goes through the guest agent; what a cloud user does (log in, sudo, see
the login methods) goes through a real SSH connection from the host.
"""

from __future__ import annotations

import json
import time

from ...recipe import SeedKind
from ..agent import Agent
from ..results import Check
from .registry import CheckContext, CheckKind, register

SEEDED = (SeedKind.NOVA, SeedKind.OVIRT, SeedKind.NOCLOUD)
# The datasource cloud-init must report for each seed (/run/cloud-init/result.json).
DATASOURCE = {SeedKind.NOVA: "ConfigDrive", SeedKind.OVIRT: "ConfigDrive", SeedKind.NOCLOUD: "NoCloud"}
GROW_WAIT_SECONDS = 60


# What cloud-init's own commands read: each call of its CLI is a Python start of 3-4 s under emulation,
# with the host's cores already busy with the cells' guests, so the checks read these files for what
# `cloud-init analyze` and `cloud-init query` would print, and call the CLI once, for `status`.
STATUS_JSON = "/run/cloud-init/status.json"          # per stage: start, finished, errors (status --long)
RESULT_JSON = "/run/cloud-init/result.json"          # the datasource and the run's errors
INSTANCE_DATA = "/run/cloud-init/instance-data.json"  # what `cloud-init query` renders (v1.instance_id)
STAGES = ("init-local", "init", "modules-config", "modules-final")


def _read_json(agent: Agent, path: str) -> tuple[dict, str]:
    """``path`` in the guest as JSON, and "" or why it could not be read."""
    rc, out, err = agent.exec(["cat", path])
    if rc != 0:
        return {}, f"{path}: {err.strip() or f'exit {rc}'}"
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        return {}, f"{path} unreadable: {out[:80]!r}"
    return (data, "") if isinstance(data, dict) else ({}, f"{path} is not an object")


def _stages(status: dict) -> dict[str, float]:
    """Each stage's seconds from status.json's start and finish, as `cloud-init analyze show` gives them
    ("Finished stage: (init-local) 01.23 seconds"); "init" is reported as analyze names it, init-network."""
    stages: dict[str, float] = {}
    for name in STAGES:
        stage = status.get("v1", {}).get(name) or {}
        start, end = stage.get("start"), stage.get("finished")
        if isinstance(start, (int, float)) and isinstance(end, (int, float)):
            stages["init-network" if name == "init" else name] = round(end - start, 2)
    return stages


@register("cloud-init-status", "cloud-init finished without errors (seeded), or is disabled (no seed); "
          "no traceback in its log", order=200, kind=CheckKind.CLOUD)
def check_cloud_init_status(agent: Agent, ctx: CheckContext) -> Check:
    wait = max(10, int(ctx.deadline - time.monotonic()))
    _, out, _ = agent.exec(["timeout", str(wait), "cloud-init", "status", "--wait", "--long"], timeout=wait + 15)
    status = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("status:")), "?")
    rc, tb, _ = agent.exec(["sh", "-c", "grep -c Traceback /var/log/cloud-init.log 2>/dev/null || true"])
    tracebacks = int(tb.strip() or 0)
    if ctx.seed is SeedKind.NONE:
        ok = status == "disabled" and tracebacks == 0
        return Check("cloud-init-status", ok, f"no seed: status {status} (ds-identify found no datasource, "
                                              f"nothing waited)" if ok else f"no seed, yet status {status!r}, "
                                              f"{tracebacks} traceback(s) in /var/log/cloud-init.log")
    result, why = _read_json(agent, RESULT_JSON)
    errors = [why] if why else list(result.get("v1", {}).get("errors", [f"{RESULT_JSON} has no v1.errors"]))
    status_data, why = _read_json(agent, STATUS_JSON)  # {} when unreadable: no stages, no stage errors
    stages = _stages(status_data)
    if why:
        errors.append(why)
    for name in STAGES:
        errors += [e for e in (status_data.get("v1", {}).get(name) or {}).get("errors", []) if e not in errors]
    ctx.facts["cloud_init_stages"] = stages
    ok = status == "done" and not errors and tracebacks == 0
    took = ", ".join(f"{k} {v:.1f}s" for k, v in stages.items())
    return Check("cloud-init-status", ok, f"status {status}, {len(errors)} error(s)"
                 + (f": {errors[:3]}" if errors else "") + f", {tracebacks} traceback(s); stages: {took or '?'}")


@register("datasource", "cloud-init used the seed's datasource and instance id (result.json, and "
          "instance-data.json, which cloud-init query renders)",
          order=210, kind=CheckKind.CLOUD, seeds=SEEDED)
def check_datasource(agent: Agent, ctx: CheckContext) -> Check:
    result, why_ds = _read_json(agent, RESULT_JSON)
    ds = str(result.get("v1", {}).get("datasource", ""))
    data, why_iid = _read_json(agent, INSTANCE_DATA)
    iid = str(data.get("v1", {}).get("instance_id", ""))
    want_ds, want_iid = DATASOURCE[ctx.seed], ctx.seed_request.instance_id
    ok = want_ds in ds and iid == want_iid
    return Check("datasource", ok, f"datasource {ds or '?'}, instance id {iid or '?'}"
                 + ("" if ok else f"; the {ctx.seed} seed carries {want_ds}, {want_iid}")
                 + "".join(f"; {why}" for why in (why_ds, why_iid) if why))


@register("hostname", "the guest calls itself by the metadata's hostname", order=220, kind=CheckKind.CLOUD,
          seeds=SEEDED)
def check_hostname(agent: Agent, ctx: CheckContext) -> Check:
    _, out, _ = agent.exec(["hostname"])
    want = ctx.seed_request.hostname.split(".")[0]
    return Check("hostname", out.strip() == want, f"hostname {out.strip()!r}, the metadata says {want!r}")


def _root_bytes(agent: Agent) -> int:
    _, out, _ = agent.exec(["findmnt", "-bno", "SIZE", "/"])
    return int(out.split()[0]) if out.split() else 0


@register("root-grown", "/ grew past the image's size into the larger disk the cell gave it",
          order=230, kind=CheckKind.CLOUD)
def check_root_grown(agent: Agent, ctx: CheckContext) -> Check:
    """With a seed, cloud-init's growpart and resizefs grow it; with none, the initramfs's growroot and
    systemd's x-systemd.growfs do. Either way / must end larger than it was built."""
    want = ctx.original_root_bytes + 1024 ** 3  # the cell adds (grow_gib - disk_gib) GiB, at least one
    deadline = time.monotonic() + GROW_WAIT_SECONDS
    size = _root_bytes(agent)
    while size < want and time.monotonic() < deadline:
        time.sleep(2)
        size = _root_bytes(agent)
    _, part, _ = agent.exec(["sh", "-c", "lsblk -bno SIZE $(findmnt -no SOURCE /)"])
    gib = 1024 ** 3
    return Check("root-grown", size >= want, f"/ is {size / gib:.2f} GiB (partition "
                 f"{int(part.split()[0]) / gib if part.split() else 0:.2f} GiB), built as "
                 f"{ctx.original_root_bytes / gib:.2f} GiB, on a {ctx.recipe.boot_test.grow_gib} GiB disk")


def _runcmd_count(agent: Agent, ctx: CheckContext) -> int:
    _, out, _ = agent.exec(["sh", "-c", f"cat {ctx.seed_request.runcmd_marker} 2>/dev/null | wc -l"])
    return int(out.strip() or 0)


@register("user-data", "the user-data's runcmd ran exactly once", order=240, kind=CheckKind.CLOUD, seeds=SEEDED)
def check_user_data(agent: Agent, ctx: CheckContext) -> Check:
    n = _runcmd_count(agent, ctx)
    return Check("user-data", n == 1, f"runcmd ran {n} time(s) ({ctx.seed_request.runcmd_marker})")


@register("ssh-login", "the default user logs in over SSH from the host with the key only the seed carried",
          order=250, kind=CheckKind.CLOUD, seeds=SEEDED)
def check_ssh_login(agent: Agent, ctx: CheckContext) -> Check:
    """The login itself is watched from power-on (``ssh.LoginWatch``), so its time is when a cloud user
    could first have logged in, not when this check's turn came."""
    watch = ctx.login_watch
    if not watch.wait(ctx.deadline):
        return Check("ssh-login", False, f"ssh {ctx.ssh.user}@127.0.0.1 -p {ctx.ssh.port}: "
                     + (f"banner after {watch.seconds_to_banner:.0f}s, but no login: {watch.last_error}"
                        if watch.banner else "no SSH banner before the boot timeout"))
    ctx.facts["seconds_to_ssh_banner"] = watch.seconds_to_banner
    ctx.facts["seconds_to_login"] = watch.seconds_to_login
    return Check("ssh-login", True, f"logged in as {ctx.ssh.user} with the seed's key ({watch.banner}); banner "
                                    f"{watch.seconds_to_banner:.0f}s, login {watch.seconds_to_login:.0f}s after "
                                    "power-on")


@register("sudo", "the default user has passwordless sudo (over SSH: sudo -n true)", order=260,
          kind=CheckKind.CLOUD, seeds=SEEDED)
def check_sudo(agent: Agent, ctx: CheckContext) -> Check:
    rc, out, err = ctx.ssh.run("sudo -n true && echo sudo-ok")
    ok = rc == 0 and "sudo-ok" in out
    return Check("sudo", ok, f"sudo -n true as {ctx.ssh.user}: " + ("ok" if ok else f"exit {rc}: {err.strip()[-200:]}"))


@register("password-login", "sshd offers no password login (it does in the oVirt cell: its Initial Run asks)",
          order=270, kind=CheckKind.CLOUD, seeds=SEEDED)
def check_password_login(agent: Agent, ctx: CheckContext) -> Check:
    methods = ctx.ssh.auth_methods()
    offered = "password" in methods or "keyboard-interactive" in methods
    want = ctx.seed is SeedKind.OVIRT  # oVirt's user-data says ssh_pwauth: true
    return Check("password-login", bool(methods) and offered == want,
                 f"sshd offers {','.join(methods) or 'nothing readable'}; password login "
                 f"{'on' if offered else 'off'}, {'on' if want else 'off'} wanted"
                 + (" (oVirt's Initial Run asked for it)" if want else ""))


@register("second-boot", "booted again with the seed still attached: user-data not rerun, host keys kept, "
          "login works", order=400, kind=CheckKind.CLOUD, seeds=(SeedKind.NOVA,), second_boot=True)
def check_second_boot(agent: Agent, ctx: CheckContext) -> Check:
    n = _runcmd_count(agent, ctx)
    rc, fp, _ = agent.exec(["sh", "-c", "ssh-keygen -l -f /etc/ssh/ssh_host_ed25519_key.pub"])
    key = fp.split()[1] if rc == 0 and len(fp.split()) > 1 else "?"
    ctx.ssh.wait_banner(ctx.deadline)
    rc, out, err = ctx.ssh.run("id -un")
    first = ctx.facts.get("host_key", "?")
    ok = n == 1 and key == first and rc == 0 and out.strip() == ctx.ssh.user
    return Check("second-boot", ok, f"runcmd ran {n} time(s) in two boots; ed25519 host key {key} "
                                    f"({'unchanged' if key == first else f'first boot had {first}'}); login "
                                    + ("ok" if rc == 0 else f"failed: {err.strip()[-200:]}"))
