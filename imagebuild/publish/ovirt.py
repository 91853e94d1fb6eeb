"""Publish to oVirt / RHV: a disk in a storage domain, filled through ovirt-imageio.

The sequence is the one oVirt's own SDK examples use (``upload_disk.py`` and ``helpers/imagetransfer.py``
in ovirt-engine-sdk): add a disk, wait until it is OK, start an image transfer, send the bytes to the
transfer URL (the ovirt-imageio daemon on a host, or the engine's proxy), finalize, wait for
``finished_success``. Any failure or interrupt cancels the transfer and removes the disk. The qcow2 is
sent as it is (transfer format ``cow``), so the disk is exactly the tested artifact.

The disk's description records the artifact's sha256 and the publish that made it (its process token
and start time). A later publish of the same artifact uses an OK disk, waits for one still being
filled by a publish at work, and removes one whose publish is gone; a publish that finds another one
created no later than its own disk steps back, so two simultaneous publishes make one disk.

Where to connect comes from oVirt's conventions, never from the command line:
``ovirt.conf`` (``$OVIRT_CONFIG_FILE`` or ``~/.config/ovirt.conf``, the file oVirt's SDK examples read;
section given by ``--ovirt-config``) with ``engine_url``, ``username``, ``password``, ``cafile``,
``storage_domain``; or the ``OVIRT_URL``, ``OVIRT_USERNAME``, ``OVIRT_PASSWORD``, ``OVIRT_CAFILE``,
``OVIRT_STORAGE_DOMAIN`` variables (as Ansible's oVirt modules use).
"""

from __future__ import annotations

import configparser
import http.client
import os
import re
import ssl
import stat
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ..errors import PublishError
from ..events import Reporter
from ..procs import process_token
from ..recipe import Ovirt
from .artifact import Artifact, PublishResult
from .remote import describe_exception, signals_deferred, undo_upload, wait_until
from .rivals import Rival, Survey, find_or_upload, rival_at_work, yield_pause
from .stream import Progress, UploadStream

DESCRIPTION_PREFIX = "imagebuild"
COMPLETE = " complete"  # appended to the description once the disk holds the verified bytes


@dataclass(frozen=True)
class Engine:
    url: str                           # https://engine.example.com/ovirt-engine/api
    username: str
    password: str
    ca_file: str
    storage_domain: str = ""

    def __repr__(self) -> str:          # never print the password, even by accident
        return f"Engine(url={self.url!r}, username={self.username!r}, ca_file={self.ca_file!r})"

    __str__ = __repr__


def config_file() -> Path:
    if os.environ.get("OVIRT_CONFIG_FILE"):
        return Path(os.environ["OVIRT_CONFIG_FILE"])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "ovirt.conf"


def load_engine(section: str | None, settings: Ovirt) -> Engine:
    """The engine to talk to: a section of ovirt.conf, else OVIRT_* variables."""
    if section:
        path = config_file()
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as f:
                parser.read_file(f)
        except OSError as exc:
            raise PublishError(f"cannot read the oVirt config {path}: {exc.strerror}") from None
        if not parser.has_section(section):
            raise PublishError(f"{path} has no section [{section}] (sections: "
                               f"{', '.join(parser.sections()) or 'none'})")
        mode = path.stat().st_mode
        if mode & (stat.S_IRGRP | stat.S_IROTH) and parser.has_option(section, "password"):
            raise PublishError(f"{path} holds a password and is readable by others: chmod 600 it")
        conf = parser[section]
        values = {k: conf.get(k, "") for k in ("engine_url", "username", "password", "cafile",
                                                "storage_domain")}
        where = f"{path} [{section}]"
    else:
        env = os.environ
        values = {"engine_url": env.get("OVIRT_URL", ""), "username": env.get("OVIRT_USERNAME", ""),
                  "password": env.get("OVIRT_PASSWORD", ""), "cafile": env.get("OVIRT_CAFILE", ""),
                  "storage_domain": env.get("OVIRT_STORAGE_DOMAIN", "")}
        where = "the OVIRT_URL/OVIRT_USERNAME/OVIRT_PASSWORD/OVIRT_CAFILE variables"
    missing = [k for k in ("engine_url", "username", "password", "cafile") if not values[k]]
    if missing:
        raise PublishError(f"oVirt access is not configured: {', '.join(missing)} missing in {where} "
                           "(see docs/publish.md)")
    if not Path(values["cafile"]).is_file():
        raise PublishError(f"oVirt CA file {values['cafile']} does not exist")
    url = values["engine_url"].rstrip("/")
    if not url.endswith("/ovirt-engine/api"):
        url += "/ovirt-engine/api"
    if not url.startswith("https://"):
        raise PublishError(f"the oVirt engine URL must be https:// (got {urlparse(url).scheme}://...)")
    storage_domain = settings.storage_domain or values["storage_domain"]
    if not storage_domain:
        raise PublishError("no oVirt storage domain: set [publish.ovirt] storage_domain in the recipe, "
                           "storage_domain in ovirt.conf, or OVIRT_STORAGE_DOMAIN")
    return Engine(url=url, username=values["username"], password=values["password"],
                  ca_file=values["cafile"], storage_domain=storage_domain)


def _description(artifact: Artifact, started: float) -> str:
    return (f"{DESCRIPTION_PREFIX} recipe={artifact.recipe} build={artifact.build_id} "
            f"sha256={artifact.sha256} boot_test={artifact.boot_test} bios_type={artifact.image.ovirt_bios_type}"
            f" live={','.join(artifact.image.live_checks) or 'none'}"
            + (" forced=true" if artifact.forced else "")
            + f" uploader={process_token()} started={started:.3f}")


def _uploader(description: str) -> tuple[str, float]:
    token = re.search(r"\buploader=(\S+)", description)
    started = re.search(r"\bstarted=([0-9.]+)", description)
    return (token.group(1) if token else "", float(started.group(1)) if started else 0.0)


def _survey(disks: Any, types: Any, name: str, artifact: Artifact, settings: Ovirt, reporter: Reporter,
            own_id: str = "") -> Survey:
    """The disks named for this build: a finished one holding the artifact, the ones other publishes
    are filling; any other is a leftover and is removed."""
    survey = Survey()
    for disk in disks.list(search=f"name={name}"):
        if disk.id == own_id:
            continue
        desc = disk.description or ""
        ours = f"sha256={artifact.sha256}" in desc
        token, started = _uploader(desc)
        finished = desc.endswith(COMPLETE) or not token  # no uploader: written before uploaders were recorded
        if ours and finished and disk.status == types.DiskStatus.OK:
            if survey.existing is None or started < _uploader(survey.existing.description or "")[1]:
                survey.existing = disk
            continue
        status = str(getattr(disk.status, "value", disk.status))
        if ours and finished and disk.status == types.DiskStatus.LOCKED:
            # a finished disk the engine is busy with (a template): wait, never remove
            survey.rivals.append(Rival(disk.id, token, status, started))
            continue
        why = "it holds another artifact"
        if ours:
            at_work, why = rival_at_work(token, started, settings.stale_upload_minutes, status)
            if at_work:
                survey.rivals.append(Rival(disk.id, token, status, started))
                continue
        reporter.info(f"removing oVirt disk {disk.id} ({name}): {why}")
        disks.disk_service(disk.id).remove()
    return survey


def _send(url: str, ca_file: str, stream: UploadStream, size: int) -> None:
    """PUT the bytes to ovirt-imageio in one streamed request (Content-Length, chunks from disk)."""
    u = urlparse(url)
    ctx = ssl.create_default_context(cafile=ca_file)
    conn = http.client.HTTPSConnection(u.hostname or "", u.port or 443, context=ctx, timeout=120)
    try:
        conn.putrequest("PUT", u.path + (f"?{u.query}" if u.query else ""))
        conn.putheader("Content-Type", "application/octet-stream")
        conn.putheader("Content-Length", str(size))
        conn.endheaders()
        while chunk := stream.read():
            conn.send(chunk)
        resp = conn.getresponse()
        body = resp.read(4096).decode(errors="replace")
        if resp.status not in (200, 204):
            raise PublishError(f"ovirt-imageio refused the upload: HTTP {resp.status} {body.strip()[:300]}")
    finally:
        conn.close()


def publish_to_ovirt(artifact: Artifact, settings: Ovirt, *, config: str | None = None,
                     reporter: Reporter, rate_limit: int | None = None) -> PublishResult:
    try:
        import ovirtsdk4 as sdk
        import ovirtsdk4.types as types
    except ImportError:
        raise PublishError("ovirt-engine-sdk-python is not installed: pip install 'imagebuild[publish]'") \
            from None
    engine = load_engine(config, settings)
    try:
        connection = sdk.Connection(url=engine.url, username=engine.username, password=engine.password,
                                    ca_file=engine.ca_file, log=None, debug=False)
    except sdk.Error as exc:
        raise PublishError(f"oVirt: {describe_exception(exc)}") from None
    name = artifact.versioned_name
    try:
        system = connection.system_service()
        disks = system.disks_service()

        disk, created = _find_or_upload(system, disks, types, sdk, engine, name, artifact, settings,
                                         reporter, rate_limit)
        if not created:
            return PublishResult(target="ovirt", image_id=disk.id, name=name, created=False,
                                 forced=artifact.forced, location=engine.url)
        extra: dict[str, str] = {}
        if settings.template:
            user = _initial_run_user(artifact, settings, reporter)
            extra["template_id"] = _make_template(system, types, disk.id, name, settings, reporter,
                                                  artifact.image.ovirt_bios_type, user)
        return PublishResult(target="ovirt", image_id=disk.id, name=name, created=True,
                             forced=artifact.forced, location=engine.url, method="imageio", extra=extra,
                             sent_bytes=artifact.file_size)
    except sdk.Error as exc:
        raise PublishError(f"oVirt: {describe_exception(exc)}") from None
    finally:
        with suppress(Exception):
            connection.close()


def _find_or_upload(system: Any, disks: Any, types: Any, sdk: Any, engine: Engine, name: str,
                    artifact: Artifact, settings: Ovirt, reporter: Reporter,
                    rate_limit: int | None) -> tuple[Any, bool]:
    """The disk holding the artifact, found (False) or uploaded now (True); never two of them."""
    disk, created = find_or_upload(
        lambda: _survey(disks, types, name, artifact, settings, reporter),
        lambda: _upload_disk(system, disks, types, sdk, engine, name, artifact, settings, reporter, rate_limit),
        what="oVirt disk", timeout=settings.timeout_seconds, reporter=reporter)
    if not created:
        reporter.info(f"oVirt already has this artifact as disk {name} ({disk.id}): nothing to upload")
    return disk, created


def _upload_disk(system: Any, disks: Any, types: Any, sdk: Any, engine: Engine, name: str,
                 artifact: Artifact, settings: Ovirt, reporter: Reporter,
                 rate_limit: int | None) -> Any:
    """Add the disk and fill it: the disk, or None when another publish of the artifact turned out to
    have started no later (ours is removed again)."""
    started = time.time()
    disk = disks.add(types.Disk(
        name=name, description=_description(artifact, started), content_type=types.DiskContentType.DATA,
        format=types.DiskFormat.COW, sparse=True, provisioned_size=artifact.virtual_size,
        initial_size=artifact.file_size,
        storage_domains=[types.StorageDomain(name=engine.storage_domain)]))
    reporter.event("ovirt-disk-created", disk_id=disk.id, name=name)
    disk_service = disks.disk_service(disk.id)
    transfer_service = None
    stream: UploadStream | None = None
    try:
        wait_until(lambda: disk_service.get().status == types.DiskStatus.OK,
                   timeout=settings.timeout_seconds, what=f"oVirt disk {disk.id} to be created")
        first = _survey(disks, types, name, artifact, settings, reporter, own_id=disk.id).started_no_later(started)
        if first:
            with signals_deferred():
                _undo(None, disk_service, disk.id, reporter,
                      f"another publish of this artifact started first ({first})")
            yield_pause()
            return None
        transfers = system.image_transfers_service()
        transfer = transfers.add(types.ImageTransfer(
            disk=types.Disk(id=disk.id), direction=types.ImageTransferDirection.UPLOAD,
            format=types.DiskFormat.COW, inactivity_timeout=120))
        transfer_service = transfers.image_transfer_service(transfer.id)

        def ready() -> Any:
            t = transfer_service.get()
            if t.phase == types.ImageTransferPhase.TRANSFERRING:
                return t
            if t.phase != types.ImageTransferPhase.INITIALIZING:
                raise PublishError(f"oVirt image transfer {transfer.id} went to {t.phase} before sending")
            return None

        transfer = wait_until(ready, timeout=300, what=f"oVirt image transfer {transfer.id}")
        url = transfer.transfer_url or transfer.proxy_url
        if not url:
            raise PublishError(f"oVirt image transfer {transfer.id} has no transfer or proxy URL")
        reporter.info(f"created oVirt disk {disk.id} ({name}) in {engine.storage_domain}; "
                      f"sending the bytes to ovirt-imageio at {urlparse(url).netloc}")
        progress = Progress(reporter, "upload", artifact.file_size)
        stream = UploadStream(artifact.path, progress, rate_limit=rate_limit)
        _send(url, engine.ca_file, stream, artifact.file_size)
        progress.done()
        transfer_service.finalize()
        _wait_finalized(sdk, types, transfer_service, disk_service, transfer.id,
                        settings.timeout_seconds)
        disk_service.update(types.Disk(description=_description(artifact, started) + COMPLETE))
        reporter.info(f"oVirt disk {disk.id} is OK")
    except BaseException as exc:
        why = type(exc).__name__
        undo_upload(exc, lambda: _undo(transfer_service, disk_service, disk.id, reporter, why),
                    f"uploading to oVirt failed (disk {disk.id} was removed)")
    finally:
        if stream is not None:
            stream.close()
    return disk


def _wait_finalized(sdk: Any, types: Any, transfer_service: Any, disk_service: Any, transfer_id: str,
                    timeout: float) -> None:
    """As oVirt's examples do: success is finished_success, or the transfer gone and the disk OK."""
    def check() -> bool:
        try:
            t = transfer_service.get()
        except sdk.NotFoundError:
            status = disk_service.get().status
            if status == types.DiskStatus.OK:
                return True
            raise PublishError(f"oVirt image transfer {transfer_id} ended with the disk {status}") from None
        if t.phase == types.ImageTransferPhase.FINISHED_SUCCESS:
            return True
        if t.phase in (types.ImageTransferPhase.FINISHED_FAILURE, types.ImageTransferPhase.CANCELLED_SYSTEM,
                       types.ImageTransferPhase.CANCELLED_USER, types.ImageTransferPhase.CANCELLED):
            raise PublishError(f"oVirt image transfer {transfer_id} failed ({t.phase.value}); "
                               "the engine's event log says why")
        return False

    wait_until(check, timeout=timeout, what=f"oVirt to finalize image transfer {transfer_id}")


def _undo(transfer_service: Any, disk_service: Any, disk_id: str, reporter: Reporter, why: str) -> None:
    """Cancel the transfer and remove the disk; say so if either fails."""
    reporter.info(f"removing oVirt disk {disk_id} (upload did not complete: {why})")
    reporter.event("ovirt-disk-removed", disk_id=disk_id, reason=why)
    if transfer_service is not None:
        with suppress(Exception):
            transfer_service.cancel()
    deadline = time.monotonic() + 120
    while True:
        try:
            disk_service.remove()
            return
        except Exception as exc:
            if "404" in str(exc) or "not found" in str(exc).lower():
                return
            if time.monotonic() > deadline:
                reporter.info(f"⚠ could not remove oVirt disk {disk_id}: {describe_exception(exc)}; "
                              "remove it by hand")
                return
            time.sleep(1)  # the disk stays locked until the engine has processed the cancel


def _initial_run_user(artifact: Artifact, settings: Ovirt, reporter: Reporter) -> str:
    """Whom the template's default Initial Run sets up, when the recipe asks for one (``initial_run``): the
    cloud image's default user, to whom the engine's cloud-init data gives the VM's key; "" for no Initial
    Run (an image without cloud-init has nothing to read it)."""
    if not settings.initial_run:
        return ""
    if not artifact.image.cloud:
        reporter.info("⚠ publish.ovirt.initial_run is set, but the image has no cloud-init ([cloud] enabled = "
                      "false): the template gets no Initial Run")
        return ""
    return artifact.image.admin_user


def _make_template(system: Any, types: Any, disk_id: str, name: str, settings: Ovirt,
                   reporter: Reporter, bios_type: str, initial_run_user: str = "") -> str:
    """A template from the uploaded disk: a VM with that disk as bootable and the chipset/firmware the
    boot test proved (``bios_type``, kept by the template), then a template from the VM; with
    ``initial_run_user``, the template's Initial Run sets that user up through cloud-init."""
    vms = system.vms_service()
    vm = vms.add(types.Vm(name=f"{name}-tmp", cluster=types.Cluster(name=settings.cluster),
                          template=types.Template(name="Blank"),
                          bios=types.Bios(type=types.BiosType(bios_type))))
    vm_service = vms.vm_service(vm.id)
    try:
        vm_service.disk_attachments_service().add(types.DiskAttachment(
            disk=types.Disk(id=disk_id), interface=types.DiskInterface.VIRTIO, bootable=True, active=True))
        wait_until(lambda: vm_service.get().status == types.VmStatus.DOWN, timeout=settings.timeout_seconds,
                   what=f"oVirt VM {vm.id} to be ready")
        templates = system.templates_service()
        initial_run: dict[str, Any] = {}
        if initial_run_user:
            # The flat Initialization attributes (its cloud_init, a types.CloudInit, is deprecated in API 4).
            # At a VM's first run the engine picks the initialization type by the VM's OS (cloud-init where
            # the OS supports it, Sysprep on Windows), so the template says Linux, not Blank's "other".
            initial_run = {"initialization": types.Initialization(user_name=initial_run_user,
                                                                   regenerate_ssh_keys=True),
                           "os": types.OperatingSystem(type="other_linux")}
        template = templates.add(types.Template(name=name, vm=types.Vm(id=vm.id), **initial_run))
        template_service = templates.template_service(template.id)
        wait_until(lambda: template_service.get().status == types.TemplateStatus.OK,
                   timeout=settings.timeout_seconds, what=f"oVirt template {name}")
        reporter.info(f"created oVirt template {name} ({template.id})"
                      + (f" whose Initial Run sets up {initial_run_user} with cloud-init" if initial_run_user else ""))
        return str(template.id)
    finally:
        with suppress(Exception):
            vm_service.remove(detach_only=True)  # the helper VM goes; the uploaded disk stays
