"""Checks of what the booted image shows: firmware and chipset as the cell claims, the fresh MAC and its
DHCP lease, the packages, the virtio drivers, systemd's first boot, the layout, and the identity made at
first boot (machine-id, SSH host keys)."""

from __future__ import annotations

import json
import time
from typing import Any

from ...disklayout import ESP_MOUNT, layout_for
from ...recipe import BootFirmware, Family, Machine
from ..agent import Agent
from ..results import Check
from .registry import CheckContext, CheckKind, register, system_wait_argv


@register("multi-user", "systemd finished the first boot (running or degraded), no failed unit",
          order=100, kind=CheckKind.SYSTEM)
def check_system_running(agent: Agent, ctx: CheckContext) -> Check:
    """systemd finished starting the first boot's units, none failed. ``_run_checks`` starts the wait
    before the checks that do not need it (``ctx.system_wait``) and collects it here."""
    argv = system_wait_argv(ctx)
    pid = ctx.system_wait if ctx.system_wait is not None else agent.start(argv)
    _, out, _ = agent.wait(pid, argv, timeout=max(10, ctx.deadline - time.monotonic()) + 15)
    state = out.strip()
    _, failed, _ = agent.exec(["systemctl", "list-units", "--failed", "--plain", "--no-legend"])
    units = [ln.split()[0] for ln in failed.splitlines() if ln.strip()]
    bad = [u for u in units if u not in ctx.recipe.boot_test.allow_failed_units]
    if state not in ("running", "degraded"):
        return Check("multi-user", False, f"system state is {state!r}, not running")
    if bad:
        return Check("multi-user", False, f"failed units: {', '.join(bad)}")
    return Check("multi-user", True, f"state {state}" + (f" (allowed failures: {', '.join(units)})"
                                                          if units else ", no failed units"))


def _nic(agent: Agent, mac: str) -> dict[str, Any] | None:
    _, out, _ = agent.exec(["ip", "-j", "addr", "show"])
    for link in json.loads(out or "[]"):
        if link.get("address", "").lower() == mac.lower():
            return dict(link)
    return None


@register("fresh-mac", "an interface carries the fresh MAC the cell gave the guest", order=30, kind=CheckKind.SYSTEM)
def check_fresh_mac(agent: Agent, ctx: CheckContext) -> Check:
    nic = _nic(agent, ctx.mac)
    if nic is None:
        return Check("fresh-mac", False, f"no interface has the MAC {ctx.mac} the test gave the guest")
    return Check("fresh-mac", True, f"{nic['ifname']} has {ctx.mac}")


@register("dhcp", "that interface leased an IPv4 address by DHCP", order=40, kind=CheckKind.SYSTEM)
def check_dhcp(agent: Agent, ctx: CheckContext) -> Check:
    # DHCP may still be negotiating right after boot: give it until the deadline.
    while True:
        nic = _nic(agent, ctx.mac)
        addrs = [a for a in (nic or {}).get("addr_info", [])
                 if a.get("family") == "inet" and a.get("dynamic")]
        if nic is not None and addrs:
            return Check("dhcp", True, f"{nic['ifname']} leased {addrs[0]['local']}/{addrs[0]['prefixlen']}")
        if time.monotonic() > ctx.deadline:
            return Check("dhcp", False, "no DHCP-assigned IPv4 address on the test NIC")
        time.sleep(2)


@register("single-root", "block-device mounts are / (ext4) and the layout's ESP only, on its partitions",
          order=110, kind=CheckKind.SYSTEM)
def check_single_root(agent: Agent, ctx: CheckContext) -> Check:
    layout = layout_for(ctx.recipe.image.firmware)
    _, mounts, _ = agent.exec(["cat", "/proc/self/mounts"])
    block = {ln.split()[1]: ln.split()[2] for ln in mounts.splitlines() if ln.startswith("/dev/")}
    _, lsblk, _ = agent.exec(["lsblk", "-J", "-o", "NAME,TYPE,FSTYPE"])
    parts = [c for d in json.loads(lsblk).get("blockdevices", []) for c in d.get("children", []) or []
             if c.get("type") == "part"]
    want = {"/": "ext4", **({ESP_MOUNT: "vfat"} if layout.esp is not None else {})}
    ok = block == want and len(parts) == len(layout.partitions)
    return Check("single-root", ok, f"block-device mounts {dict(sorted(block.items()))}, {len(parts)} "
                                    f"partition(s); a {layout.firmware} image has {want} on "
                                    f"{len(layout.partitions)}")


@register("no-swap", "no swap is active", order=120, kind=CheckKind.SYSTEM)
def check_no_swap(agent: Agent, ctx: CheckContext) -> Check:
    _, out, _ = agent.exec(["cat", "/proc/swaps"])
    active = out.strip().splitlines()[1:]
    return Check("no-swap", not active, "no swap active" if not active else f"swap active: {active}")


@register("packages", "every package of the recipe (base, extra, cloud) is installed", order=50, kind=CheckKind.SYSTEM)
def check_packages(agent: Agent, ctx: CheckContext) -> Check:
    wanted = list(ctx.recipe.all_packages)
    if ctx.recipe.image.family is Family.DEBIAN:
        _, out, _ = agent.exec(["dpkg-query", "-W", "-f", "${Package} ${db:Status-Abbrev}\n"])
        have = {ln.split()[0] for ln in out.splitlines() if ln.split()[1:2] == ["ii"]}
    else:
        _, out, _ = agent.exec(["rpm", "-qa", "--qf", "%{NAME}\n"])
        have = set(out.split())
    missing = [p for p in wanted if p not in have]
    return Check("packages", not missing,
                 f"all of {' '.join(wanted)} installed" if not missing else f"missing: {' '.join(missing)}")


@register("machine-id", "/etc/machine-id was generated at first boot", order=130, kind=CheckKind.SYSTEM)
def check_machine_id(agent: Agent, ctx: CheckContext) -> Check:
    _, out, _ = agent.exec(["cat", "/etc/machine-id"])
    mid = out.strip()
    ok = len(mid) == 32 and all(c in "0123456789abcdef" for c in mid)
    return Check("machine-id", ok, f"generated at first boot: {mid}" if ok else f"machine-id is {mid!r}")


@register("ssh-hostkeys", "SSH host keys were made at first boot, sshd serves the RSA one made after it started "
          "(their fingerprint is recorded)", order=140, kind=CheckKind.SYSTEM)
def check_ssh_hostkeys(agent: Agent, ctx: CheckContext) -> Check:
    """The keys were made at first boot, and ``ssh-keyscan`` inside the guest reads the RSA key from sshd:
    on Debian it is made after sshd started (customize/ssh_hostkeys.py), and sshd must have been reloaded
    to serve it."""
    rc, out, _ = agent.exec(["sh", "-c", "ls /etc/ssh/ssh_host_*_key"])
    keys = out.split()
    if rc != 0 or not keys:
        return Check("ssh-hostkeys", False, "no SSH host keys after boot")
    # the fingerprint lets two clones (and two boots of one) be compared: each clone makes its own keys
    key = next((k for k in keys if k.endswith("_ed25519_key")), keys[-1])
    _, fp, _ = agent.exec(["ssh-keygen", "-l", "-f", key + ".pub"])
    fingerprint = fp.split()[1] if len(fp.split()) > 1 else "?"
    ctx.facts["host_key"] = fingerprint
    made = f"regenerated: {' '.join(k.rsplit('/', 1)[-1] for k in keys)}; {key.rsplit('/', 1)[-1]} {fingerprint}"
    rsa_key = next((k for k in keys if k.endswith("_rsa_key")), None)
    if rsa_key is None:
        return Check("ssh-hostkeys", True, made)
    _, pub, _ = agent.exec(["cat", rsa_key + ".pub"])
    rsa = pub.split()[1] if len(pub.split()) > 1 else "?"
    # one key exchange under emulation is ~1.5 s: only the RSA key, the one made after sshd started, is read
    # back (the SSH login reads the others)
    rc, scan, _ = agent.exec(["sh", "-c", "command -v ssh-keyscan >/dev/null || exit 127; "
                              "ssh-keyscan -T 10 -t rsa 127.0.0.1 2>/dev/null"], timeout=60)
    if rc == 127:  # EL: ssh-keyscan is in openssh-clients, which a minimal image may lack
        return Check("ssh-hostkeys", True, made + " (no ssh-keyscan in the image: what sshd serves not read)")
    served = {parts[2] for ln in scan.splitlines() if len(parts := ln.split()) >= 3 and not ln.startswith("#")}
    if rsa not in served:
        return Check("ssh-hostkeys", False, f"{made}; sshd does not serve the RSA key in /etc/ssh "
                                            f"(ssh-keyscan -t rsa read {len(served)} key(s))")
    return Check("ssh-hostkeys", True, f"{made}; sshd serves the RSA key")


# The EFI global variable SecureBoot: 4 bytes of attributes, then 1 (enforcing) or 0.
SECURE_BOOT_VAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


@register("firmware", "booted through the cell's firmware: EFI or not, Secure Boot on exactly when asked",
          order=10, kind=CheckKind.SYSTEM)
def check_firmware(agent: Agent, ctx: CheckContext) -> Check:
    """The guest booted through the cell's firmware: EFI or not, and Secure Boot on exactly when asked."""
    rc, _, _ = agent.exec(["test", "-d", "/sys/firmware/efi"])
    efi = rc == 0
    want_efi = ctx.cell.firmware is not BootFirmware.BIOS
    if efi != want_efi:
        return Check("firmware", False, f"the guest {'did' if efi else 'did not'} boot through UEFI "
                                        f"(/sys/firmware/efi), but the cell is {ctx.cell.firmware}")
    if not efi:
        return Check("firmware", True, "booted through BIOS (no /sys/firmware/efi)")
    rc, out, _ = agent.exec(["od", "-An", "-tu1", SECURE_BOOT_VAR])
    values = out.split()
    sb = rc == 0 and len(values) == 5 and values[4] == "1"
    want_sb = ctx.cell.firmware is BootFirmware.SECURE_BOOT
    if sb != want_sb:
        return Check("firmware", False, f"Secure Boot is {'on' if sb else 'off'} in the guest "
                                        f"(SecureBoot variable {values or 'absent'}), the cell wants it "
                                        f"{'on' if want_sb else 'off'}")
    return Check("firmware", True, "booted through UEFI, Secure Boot " + ("enforcing (SecureBoot=1)" if sb
                                                                         else "off"))


DMI_PRODUCT = {Machine.PC: "i440FX", Machine.Q35: "Q35"}


@register("machine", "the chipset is the cell's (DMI product name: i440FX or Q35)", order=20, kind=CheckKind.SYSTEM)
def check_machine(agent: Agent, ctx: CheckContext) -> Check:
    _, out, _ = agent.exec(["cat", "/sys/class/dmi/id/product_name"])
    product = out.strip()
    ok = DMI_PRODUCT[ctx.cell.machine] in product
    return Check("machine", ok, f"DMI product '{product}'" + ("" if ok else f", expected {ctx.cell.machine}"))



@register("virtio", "virtio drivers bound to the disk (the cell's bus), NIC, balloon and console",
          order=60, kind=CheckKind.SYSTEM)
def check_virtio(agent: Agent, ctx: CheckContext) -> Check:
    """The guest bound virtio drivers to the disk (the cell's bus), NIC, balloon, console and RNG."""
    # shell builtins only: a fork costs ~0.1 s of the guest's one vCPU under emulation, and `ls | grep`
    # per driver took 2.4 s of a cell
    _, out, _ = agent.exec(["sh", "-c", "cd /sys/bus/virtio/drivers && for d in *; do n=0; "
                                        'for x in "$d"/virtio*; do [ -e "$x" ] && n=$((n+1)); done; '
                                        'echo "$d $n"; done'])
    bound = {ln.split()[0]: int(ln.split()[1]) for ln in out.splitlines() if len(ln.split()) == 2}
    disk_driver = {"virtio": "virtio_blk", "scsi": "virtio_scsi"}[ctx.disk_bus]
    want = (disk_driver, "virtio_net", "virtio_balloon", "virtio_console")
    missing = [d for d in want if not bound.get(d)]
    have = ", ".join(f"{d}×{n}" for d, n in sorted(bound.items()) if n)
    if missing:
        return Check("virtio", False, f"no device bound to {', '.join(missing)} (bound: {have or 'none'})")
    return Check("virtio", True, f"root disk on {disk_driver}; bound: {have}")


# The order: first what the booted image shows whatever systemd is still starting, then the live
# operations (vCPU hotplug last: a guest that hangs on one hides little else), then what the first
# boot's units must have finished: the system running (its wait starts before all of these, so the
# first boot's host-key generation, seconds under emulation, overlaps them), then the mounts and swap
# (systemd mounts /boot/efi and would activate a swap unit late in the boot: read earlier, CI once saw
