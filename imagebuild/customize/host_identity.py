"""Host identity: what would make every clone of the image the same machine, or name the build host."""

from __future__ import annotations

from ..guest import Guest
from ..recipe import Family
from .registry import StepContext, existing, register, register_removal

MACHINE_ID = "/etc/machine-id"
DBUS_MACHINE_ID = "/var/lib/dbus/machine-id"
RANDOM_SEEDS = ("/var/lib/systemd/random-seed", "/var/lib/random-seed", "/var/lib/urandom/random-seed")
RESOLVED_STUB = "../run/systemd/resolve/stub-resolv.conf"


def _check_machine_id(guest: Guest, ctx: StepContext) -> list[str]:
    problems = []
    if not guest.is_file(MACHINE_ID):
        problems.append(f"{MACHINE_ID} is missing (it must exist, empty, so systemd fills it at first boot)")
    elif guest.read(MACHINE_ID).strip():
        problems.append(f"{MACHINE_ID} is not empty")
    if guest.lexists(DBUS_MACHINE_ID) and not guest.is_symlink(DBUS_MACHINE_ID):
        problems.append(f"{DBUS_MACHINE_ID} is a copy, not a link to {MACHINE_ID}")
    return problems


@register("machine-id", "Empty /etc/machine-id (systemd makes a new one at first boot); "
          "link the D-Bus copy to it", order=200, check=_check_machine_id)
def machine_id(guest: Guest, ctx: StepContext) -> None:
    # Empty, not removed and not regenerated: an empty file makes systemd generate a fresh id at first
    # boot; a missing one breaks read-only roots, and a generated one gives every clone the same id
    # (and the same DHCP lease, cf. vagrant-libvirt PR 1184).
    guest.write(MACHINE_ID, "", mode=0o444)
    if guest.is_dir("/var/lib/dbus"):
        guest.remove(DBUS_MACHINE_ID)
        guest.symlink(MACHINE_ID, DBUS_MACHINE_ID)


register_removal("random-seed", "Remove the saved random seed, so clones do not start with the same entropy",
                 order=200, paths=existing(*RANDOM_SEEDS))


def _check_hostname(guest: Guest, ctx: StepContext) -> list[str]:
    if guest.is_file("/etc/hostname") and guest.read("/etc/hostname").strip() not in ("", "localhost"):
        return [f"/etc/hostname names a host: {guest.read('/etc/hostname').strip()!r}"]
    return []


@register("hostname", "Reset /etc/hostname to localhost (the installer or bootstrap may copy the "
          "build host's name)", order=200, check=_check_hostname)
def hostname(guest: Guest, ctx: StepContext) -> None:
    guest.write("/etc/hostname", "localhost\n", mode=0o644)


def _has_resolved(guest: Guest) -> bool:
    return any(guest.exists(p) for p in ("/lib/systemd/system/systemd-resolved.service",
                                         "/usr/lib/systemd/system/systemd-resolved.service"))


def _check_resolv(guest: Guest, ctx: StepContext) -> list[str]:
    if guest.is_file("/etc/resolv.conf") and not guest.is_symlink("/etc/resolv.conf"):
        lines = [ln for ln in guest.read("/etc/resolv.conf").splitlines()
                 if ln.split()[:1] in (["nameserver"], ["search"], ["domain"])]
        if lines:
            return [f"/etc/resolv.conf carries the build network's resolver: {'; '.join(lines)}"]
    return []


@register("resolv-conf", "Drop the build network's DNS servers from /etc/resolv.conf",
          order=200, check=_check_resolv)
def resolv_conf(guest: Guest, ctx: StepContext) -> None:
    if ctx.recipe.image.family is Family.DEBIAN and _has_resolved(guest):
        guest.remove("/etc/resolv.conf")
        guest.symlink(RESOLVED_STUB, "/etc/resolv.conf")
    elif guest.is_file("/etc/resolv.conf") and not guest.is_symlink("/etc/resolv.conf"):
        guest.write("/etc/resolv.conf", "", mode=0o644)  # the DHCP client fills it at boot
