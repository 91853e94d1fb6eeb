"""``invoke vm``: a built image booted locally as a throwaway clone that its user logs into as a cloud user.

The clone is a qcow2 overlay on the artifact (never written), grown to the recipe's ``boot_test.grow_gib``,
with a NoCloud seed carrying the user's own public key for the image's default user, the guest's port
22 forwarded to a loopback port, and the image's first boot-test cell's firmware and chipset. It prints
the ``ssh`` command that works once the guest's sshd answers, then waits: Ctrl-C (or SIGTERM) destroys
the guest and removes the overlay, the seed and the scratch dir. This is how a recipe author pokes at an
image with nothing of the image changed.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import sys
import time
import uuid
from pathlib import Path

from .accel import Accel, AccelChoice
from .boottest import cell_spec
from .boottest.seeds import SeedRequest, write_seed
from .boottest.ssh import LOOPBACK, free_port, read_banner
from .domain import firmware_files, random_mac, transient_domain
from .errors import BootTestFailed, ImageBuildError, RecipeError
from .events import Reporter
from .manifest import read_manifest
from .recipe import BootFirmware, Recipe, SeedKind
from .run import run
from .workspace import create_work_dir, new_build_id, remove_tree

KEY_PREFIXES = ("ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-")
DEFAULT_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub", "id_ed25519_sk.pub", "id_ecdsa_sk.pub")


def read_public_key(flag_value: str | None, home: Path) -> tuple[Path, str]:
    """The public key line to seed: ``--key FILE``, else the first of ``~/.ssh/id_*.pub``. A RecipeError
    naming the flag or file when there is none, it cannot be read, or it is not one OpenSSH public key."""
    if flag_value:
        path = Path(flag_value).expanduser()
        where = f"--key {flag_value}"
    else:
        found = [home / ".ssh" / n for n in DEFAULT_KEYS if (home / ".ssh" / n).is_file()]
        if not found:
            raise RecipeError(f"--key: no public key given and none in {home / '.ssh'} (id_ed25519.pub, "
                              "id_ecdsa.pub, id_rsa.pub): make one with ssh-keygen, or name one with --key")
        path, where = found[0], str(found[0])
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{where}: cannot read the public key: {exc}") from None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if len(lines) != 1 or not lines[0].startswith(KEY_PREFIXES) or len(lines[0].split()) < 2:
        hint = " (that is a private key: give the .pub file)" if "PRIVATE KEY" in text else ""
        raise RecipeError(f"{where}: not one OpenSSH public key line ('ssh-ed25519 AAAA... comment'){hint}")
    return path, lines[0]


def ssh_identity(public: Path) -> str:
    """`` -i KEY`` when the public key's private half lies beside it (ssh would not try a --key by itself)."""
    private = public.with_suffix("") if public.suffix == ".pub" else None
    return f" -i {private}" if private is not None and private.is_file() else ""


def run_vm(image: Path, recipe: Recipe, *, public_key: str, accel: AccelChoice, reporter: Reporter,
           identity: str = "", console: bool = False, out=sys.stdout) -> None:  # type: ignore[no-untyped-def]
    """Boot the clone, print how to log in, and keep it until interrupted; then remove everything."""
    if not recipe.cloud.enabled:
        raise RecipeError(f"{recipe.name} is not a cloud image ([cloud] enabled = false): it has no "
                          "cloud-init to take a key; use `invoke boot-test` to boot it")
    cell = recipe.boot_test.cells(recipe.image.firmware)[0]
    firmware_files(cell.firmware)
    bid = new_build_id(f"{recipe.name}-vm")
    work = create_work_dir(bid)
    try:
        overlay, nvram, console_log = work / "clone.qcow2", work / "VARS.fd", work / "console.log"
        run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(image.resolve()), str(overlay),
             f"{recipe.boot_test.grow_gib}G"], reporter=reporter, purpose="a throwaway clone of the image")
        if cell.firmware is not BootFirmware.BIOS:
            shutil.copyfile(firmware_files(cell.firmware)[1], nvram)
        mac, port, iid = random_mac(), free_port(), str(uuid.uuid4())
        hostname = f"{recipe.name}-{secrets.token_hex(2)}"
        seed = write_seed(SeedRequest(SeedKind.NOCLOUD, f"iid-{iid[:8]}", hostname, public_key, mac,
                                      recipe.cloud.default_user), work / "seed.iso", reporter=reporter)
        spec = cell_spec(recipe, cell, name=f"imagebuild-{bid}", accel=accel.accel, overlay=overlay, nvram=nvram,
                         console_log=console_log, mac=mac, disk_bus="virtio", seed_iso=seed, ssh_port=port,
                         uuid_=iid)
        with transient_domain(spec, reporter) as dom:
            print(f"booting {image} [{cell}] on {accel.accel} as {hostname}; console in {console_log}", file=out)
            bt = recipe.boot_test
            timeout = bt.timeout_seconds * (bt.tcg_factor if accel.accel is Accel.TCG else 1)
            start = time.monotonic()
            shown = 0
            deadline = start + timeout
            banner = ""
            while not banner:
                if not dom.isActive():
                    raise BootTestFailed(f"the guest stopped; its console: {console_log}")
                if time.monotonic() > deadline:
                    raise BootTestFailed(f"no SSH banner on {LOOPBACK}:{port} within {timeout}s; "
                                         f"console: {console_log}")
                if console:
                    shown = _follow(console_log, shown, out)
                banner = read_banner(port, timeout=2)
                if not banner:
                    time.sleep(1)
            print(f"sshd answered after {time.monotonic() - start:.0f}s ({banner}). Log in with:\n"
                  f"  ssh{identity} -p {port} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                  f"{recipe.cloud.default_user}@{LOOPBACK}\n(cloud-init may still be adding your key for a few "
                  "seconds.) Ctrl-C destroys the guest and its overlay.", file=out, flush=True)
            while dom.isActive():
                if console:
                    shown = _follow(console_log, shown, out)
                time.sleep(1)
            print("the guest powered off", file=out)
    finally:
        remove_tree(work, reporter)


def _follow(path: Path, shown: int, out) -> int:  # type: ignore[no-untyped-def]
    """Print what the serial console wrote since ``shown`` bytes (the console, read-only)."""
    with contextlib.suppress(OSError):
        with path.open("rb") as f:
            f.seek(shown)
            data = f.read()
        if data:
            out.write(data.decode("utf-8", "replace"))
            out.flush()
            return shown + len(data)
    return shown


def resolve_image(target: str, output: Path) -> tuple[Path, Recipe]:
    """``IMAGE`` (a qcow2 beside its manifest.json) or ``RECIPE`` (its build in output/RECIPE/)."""
    path = Path(target)
    if path.suffix != ".qcow2":
        path = output / target / f"{target}.qcow2"
        if not path.is_file():
            raise ImageBuildError(f"{target}: no build at {path} (build it with `invoke build {target}`, or "
                                  "name a .qcow2)")
    elif not path.is_file():
        raise ImageBuildError(f"{path}: no such image")
    recipe = Recipe.from_json(json.dumps(read_manifest(path.parent)["recipe"]))
    return path, recipe
