"""TEST DOUBLE of the oVirt engine's REST bookkeeping (the engine is Java and cannot run here).

It answers the REST calls ovirt-engine-sdk-python 4 makes for a disk upload (SSO token, disks, image
transfers, finalize/cancel; VMs, disk attachments and templates for ``template = true``) over HTTPS,
and does what the engine asks vdsm to do on the data path for real: it adds and removes tickets in a
real ovirt-imageio daemon (``ImageioServer``), whose file backend writes the volume. On finalize it
checks the volume with ``qemu-img check``, as oVirt verifies an uploaded qcow2 before marking it OK.

Only the bookkeeping is a stand-in; every byte goes through the real ovirt-imageio.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

API = "/ovirt-engine/api"


@dataclass
class DiskRecord:
    id: str
    name: str
    description: str
    size: int
    initial_size: int
    format: str
    storage_domain: str
    path: Path
    status: str = "locked"


@dataclass
class TransferRecord:
    id: str
    disk_id: str
    phase: str = "initializing"
    ticket: str = ""
    polls: int = 0


@dataclass
class EngineState:
    disks: dict[str, DiskRecord] = field(default_factory=dict)
    transfers: dict[str, TransferRecord] = field(default_factory=dict)
    vms: dict[str, dict] = field(default_factory=dict)
    templates: dict[str, dict] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail_finalize: bool = False        # make the engine's verification fail


class EngineDouble:
    """``with EngineDouble(imageio, storage_dir, ...) as engine: engine.url``"""

    def __init__(self, imageio, storage_dir: Path, *, username: str, password: str,  # type: ignore[no-untyped-def]
                 storage_domain: str = "images") -> None:
        self.imageio = imageio
        self.storage_dir = storage_dir
        self.username, self.password, self.storage_domain = username, password, storage_domain
        self.state = EngineState()
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> EngineDouble:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        engine = self

        class Handler(_Handler):
            double = engine

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.imageio.cert, self.imageio.key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()

    # -- what the engine does -----------------------------------------------------------------------
    def add_disk(self, body: ET.Element) -> DiskRecord:
        sd = body.findtext("storage_domains/storage_domain/name") or ""
        if sd != self.storage_domain:
            raise LookupError(f"storage domain '{sd}' not found")
        disk_id = str(uuid.uuid4())
        rec = DiskRecord(id=disk_id, name=body.findtext("name") or "",
                         description=body.findtext("description") or "",
                         size=int(body.findtext("provisioned_size") or 0),
                         initial_size=int(body.findtext("initial_size") or 0),
                         format=body.findtext("format") or "raw", storage_domain=sd,
                         path=self.storage_dir / disk_id)
        rec.path.write_bytes(b"")
        with open(rec.path, "r+b") as f:  # a preallocated-size sparse volume, as vdsm creates for cow
            f.truncate(rec.initial_size)
        self.state.disks[disk_id] = rec
        # The engine answers while the disk is still locked; it becomes OK a moment later.
        threading.Timer(0.3, lambda: setattr(rec, "status", "ok")).start()
        return rec

    def add_transfer(self, body: ET.Element) -> TransferRecord:
        disk_id = body.find("disk").get("id") if body.find("disk") is not None else ""  # type: ignore[union-attr]
        disk = self.state.disks[disk_id or ""]
        if disk.status != "ok":
            raise LookupError(f"disk {disk_id} is {disk.status}")
        if body.findtext("direction") != "upload" or body.findtext("format") != "cow":
            raise ValueError("this double supports cow uploads only")
        t = TransferRecord(id=str(uuid.uuid4()), disk_id=disk.id, ticket=str(uuid.uuid4()))
        disk.status = "locked"
        self.imageio.add_ticket(t.ticket, disk.path, disk.initial_size, ops=("write",), timeout=300)
        self.state.transfers[t.id] = t
        return t

    def finalize(self, t: TransferRecord) -> None:
        disk = self.state.disks[t.disk_id]
        self.imageio.remove_ticket(t.ticket)
        t.phase = "finalizing_success"
        check = subprocess.run(["qemu-img", "check", "-f", "qcow2", str(disk.path)], capture_output=True)
        if check.returncode != 0 or self.state.fail_finalize:
            t.phase, disk.status = "finished_failure", "illegal"
        else:
            t.phase, disk.status = "finished_success", "ok"

    def cancel(self, t: TransferRecord) -> None:
        self.imageio.remove_ticket(t.ticket)
        t.phase = "cancelled_user"
        disk = self.state.disks.get(t.disk_id)
        if disk:
            disk.status = "ok"  # unlocked, so the client can remove it


def _disk_xml(d: DiskRecord) -> ET.Element:
    e = ET.Element("disk", href=f"{API}/disks/{d.id}", id=d.id)
    for tag, text in (("name", d.name), ("alias", d.name), ("description", d.description),
                      ("status", d.status), ("format", d.format), ("provisioned_size", str(d.size)),
                      ("initial_size", str(d.initial_size)), ("content_type", "data"), ("sparse", "true")):
        ET.SubElement(e, tag).text = text
    sds = ET.SubElement(e, "storage_domains")
    ET.SubElement(sds, "storage_domain", id="sd-" + d.storage_domain)
    return e


class _Handler(BaseHTTPRequestHandler):
    double: EngineDouble
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, body: bytes | ET.Element | dict, ctype: str = "application/xml") -> None:
        if isinstance(body, ET.Element):
            data = ET.tostring(body, encoding="utf-8", xml_declaration=True)
        elif isinstance(body, dict):
            data, ctype = json.dumps(body).encode(), "application/json"
        else:
            data = body
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _fault(self, status: int, reason: str) -> None:
        f = ET.Element("fault")
        ET.SubElement(f, "reason").text = "Operation Failed"
        ET.SubElement(f, "detail").text = reason
        self._reply(status, f)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == "Bearer token-" + self.double.username:
            return True
        self._fault(401, "not authenticated")
        return False

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        d = self.double
        path = urlparse(self.path).path
        body = self._body()
        with d.lock:
            d.state.calls.append(f"POST {path}")
            if path == "/ovirt-engine/sso/oauth/token":
                form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                if (form.get("username"), form.get("password")) == (d.username, d.password):
                    return self._reply(200, {"access_token": "token-" + d.username, "token_type": "bearer",
                                             "exp": str(int(time.time()) + 3600)})
                return self._reply(200, {"error": "access_denied", "error_code": "access_denied"})
            if path == "/ovirt-engine/services/sso-logout":
                return self._reply(200, {})
            if not self._authorized():
                return None
            try:
                xml = ET.fromstring(body) if body else ET.Element("action")
                if path == f"{API}/disks":
                    return self._reply(201, _disk_xml(d.add_disk(xml)))
                if path == f"{API}/imagetransfers":
                    return self._reply(201, _transfer_xml(d, d.add_transfer(xml)))
                parts = path[len(API) + 1:].split("/")
                if parts[0] == "imagetransfers" and len(parts) == 3 and parts[1] in d.state.transfers:
                    t = d.state.transfers[parts[1]]
                    if parts[2] == "finalize":
                        d.finalize(t)
                    elif parts[2] == "cancel":
                        d.cancel(t)
                    a = ET.Element("action")
                    ET.SubElement(a, "status").text = "complete"
                    return self._reply(200, a)
                if path == f"{API}/vms":
                    return self._reply(201, _add_vm(d, xml))
                if parts[0] == "vms" and len(parts) == 3 and parts[2] == "diskattachments":
                    disk_id = xml.find("disk").get("id")  # type: ignore[union-attr]
                    d.state.vms[parts[1]]["disks"].append(disk_id)
                    return self._reply(201, ET.Element("disk_attachment", id=str(disk_id)))
                if path == f"{API}/templates":
                    return self._reply(201, _add_template(d, xml))
            except (LookupError, ValueError) as exc:
                return self._fault(400, str(exc))
            return self._fault(404, f"no such resource {path}")

    def do_GET(self) -> None:  # noqa: N802
        d = self.double
        url = urlparse(self.path)
        path = url.path
        with d.lock:
            d.state.calls.append(f"GET {path}")
            if not self._authorized():
                return None
            parts = path[len(API) + 1:].split("/")
            if path == f"{API}/disks":
                search = parse_qs(url.query).get("search", [""])[0]
                wanted = search[len("name="):] if search.startswith("name=") else None
                listing = ET.Element("disks")
                for disk in d.state.disks.values():
                    if wanted is None or disk.name == wanted:
                        listing.append(_disk_xml(disk))
                return self._reply(200, listing)
            if parts[0] == "disks" and len(parts) == 2 and parts[1] in d.state.disks:
                return self._reply(200, _disk_xml(d.state.disks[parts[1]]))
            if parts[0] == "imagetransfers" and len(parts) == 2 and parts[1] in d.state.transfers:
                t = d.state.transfers[parts[1]]
                t.polls += 1
                if t.phase == "initializing" and t.polls > 1:
                    t.phase = "transferring"
                if t.phase.startswith("finished") or t.phase.startswith("cancelled"):
                    # The engine forgets a finished transfer soon; clients then look at the disk.
                    del d.state.transfers[t.id]
                return self._reply(200, _transfer_xml(d, t))
            if parts[0] == "vms" and len(parts) == 2 and parts[1] in d.state.vms:
                return self._reply(200, _vm_xml(d.state.vms[parts[1]]))
            if parts[0] == "templates" and len(parts) == 2 and parts[1] in d.state.templates:
                return self._reply(200, _template_xml(d.state.templates[parts[1]]))
            return self._fault(404, f"no such resource {path}")

    def _named_disk(self, path: str) -> DiskRecord | None:
        parts = path[len(API) + 1:].split("/")
        if parts[0] == "disks" and len(parts) == 2:
            return self.double.state.disks.get(parts[1])
        return None

    def _refused_while_locked(self, disk: DiskRecord, verb: str) -> bool:
        """As the engine: a locked disk cannot change (the fault is sent)."""
        if disk.status == "locked":
            self._fault(409, f"Cannot {verb} Virtual Disk: Disk is locked.")
            return True
        return False

    def do_PUT(self) -> None:  # noqa: N802
        """Disk updates: the description only (what a publish changes once the bytes are verified)."""
        d = self.double
        path = urlparse(self.path).path
        body = self._body()
        with d.lock:
            d.state.calls.append(f"PUT {path}")
            if not self._authorized():
                return None
            disk = self._named_disk(path)
            if disk is None:
                return self._fault(404, f"no such resource {path}")
            if self._refused_while_locked(disk, "edit"):
                return None
            description = ET.fromstring(body).findtext("description")
            if description is not None:
                disk.description = description
            return self._reply(200, _disk_xml(disk))

    def do_DELETE(self) -> None:  # noqa: N802
        d = self.double
        url = urlparse(self.path)
        path = url.path
        with d.lock:
            d.state.calls.append(f"DELETE {path}")
            if not self._authorized():
                return None
            parts = path[len(API) + 1:].split("/")
            disk = self._named_disk(path)
            if disk is not None:
                if self._refused_while_locked(disk, "remove"):
                    return None
                disk.path.unlink(missing_ok=True)
                del d.state.disks[disk.id]
                return self._reply(200, ET.Element("action"))
            if parts[0] == "vms" and len(parts) == 2 and parts[1] in d.state.vms:
                vm = d.state.vms.pop(parts[1])
                detach_only = parse_qs(url.query).get("detach_only") == ["true"]
                for disk_id in [] if detach_only else vm["disks"]:  # as the engine: disks go with the VM
                    disk = d.state.disks.pop(disk_id, None)
                    if disk:
                        disk.path.unlink(missing_ok=True)
                return self._reply(200, ET.Element("action"))
            return self._fault(404, f"no such resource {path}")


def _transfer_xml(d: EngineDouble, t: TransferRecord) -> ET.Element:
    e = ET.Element("image_transfer", href=f"{API}/imagetransfers/{t.id}", id=t.id)
    ET.SubElement(e, "phase").text = t.phase
    ET.SubElement(e, "direction").text = "upload"
    ET.SubElement(e, "format").text = "cow"
    if t.phase != "initializing":
        ET.SubElement(e, "transfer_url").text = f"{d.imageio.url}/images/{t.ticket}"
    ET.SubElement(e, "disk", href=f"{API}/disks/{t.disk_id}", id=t.disk_id)
    return e


def _add_vm(d: EngineDouble, xml: ET.Element) -> ET.Element:
    vm = {"id": str(uuid.uuid4()), "name": xml.findtext("name"), "disks": [],
          "cluster": xml.findtext("cluster/name"), "bios_type": xml.findtext("bios/type")}
    d.state.vms[vm["id"]] = vm
    return _vm_xml(vm)


def _vm_xml(vm: dict) -> ET.Element:
    e = ET.Element("vm", href=f"{API}/vms/{vm['id']}", id=vm["id"])
    ET.SubElement(e, "name").text = vm["name"]
    ET.SubElement(e, "status").text = "down"
    return e


def _add_template(d: EngineDouble, xml: ET.Element) -> ET.Element:
    vm_id = xml.find("vm").get("id")  # type: ignore[union-attr]
    vm = d.state.vms[vm_id or ""]
    init = xml.find("initialization")
    template = {"id": str(uuid.uuid4()), "name": xml.findtext("name"), "vm": vm_id,
                "disks": list(vm["disks"]), "bios_type": vm["bios_type"],  # a template keeps its VM's
                "os_type": xml.findtext("os/type") or "other",  # Blank's
                # the default Initial Run, as sent: {"user_name": "debian", "regenerate_ssh_keys": "true"}
                # (a nested element, such as the deprecated cloud_init, as its XML)
                "initialization": None if init is None else {
                    child.tag: child.text if len(child) == 0 else ET.tostring(child, encoding="unicode")
                    for child in init},
                "initialization_xml": init}
    d.state.templates[template["id"]] = template
    return _template_xml(template)


def _template_xml(t: dict) -> ET.Element:
    e = ET.Element("template", href=f"{API}/templates/{t['id']}", id=t["id"])
    ET.SubElement(e, "name").text = t["name"]
    if t.get("bios_type"):
        ET.SubElement(ET.SubElement(e, "bios"), "type").text = t["bios_type"]
    ET.SubElement(ET.SubElement(e, "os"), "type").text = t["os_type"]
    if t.get("initialization_xml") is not None:
        e.append(t["initialization_xml"])
    ET.SubElement(e, "status").text = "ok"
    return e
