"""Real image-store servers on 127.0.0.1 for the publish tests (and for trying `invoke publish` by hand).

- ``GlanceServer``: PyPI glance under gunicorn, sqlite, file store, the interoperable import enabled.
  Identity comes from ``glance_test_identity`` (a stand-in for keystonemiddleware, see there); the
  certificates that image signatures are verified with, from ``glance_test_keymanager`` (Barbican's).
- ``ImageioServer``: PyPI ovirt-imageio's daemon, TLS with a throw-away CA, tickets over a unix socket.

Their venvs are made once by ``.ci/publish-setup`` under the same cache folder computed here.
Run ``python tests/publish/servers.py glance`` to keep a Glance up and print a clouds.yaml for it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Self

from imagebuild.paths import cache_root

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def _versions() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in (ROOT / "scripts" / "publish-versions").read_text().splitlines():
        if "=" in line and not line.startswith(("#", " ")) and "(" not in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


VERSIONS = _versions()


def cache_dir() -> Path:
    return cache_root() / "publish"  # where .ci/publish-setup puts the venvs


def glance_venv() -> Path:
    return cache_dir() / f"glance-{VERSIONS['GLANCE_VERSION']}"


def imageio_venv() -> Path:
    return cache_dir() / f"ovirt-imageio-{VERSIONS['OVIRT_IMAGEIO_VERSION']}"


def venv_ready(venv: Path) -> bool:
    return (venv / ".complete").is_file()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float,
               context: object = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2, context=context):  # type: ignore[arg-type]
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"no answer from {url} within {timeout:.0f}s:\n{_tail(log)}")


def _tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# -- Glance ----------------------------------------------------------------------------------------

GLANCE_CONF = """\
[DEFAULT]
enabled_backends = fs:file
enabled_import_methods = [glance-direct,web-download,copy-image]
log_file = {d}/glance-api.log
debug = false
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {d}/images
[os_glance_staging_store]
filesystem_store_datadir = {d}/staging
[os_glance_tasks_store]
filesystem_store_datadir = {d}/tasks
[database]
connection = sqlite:///{d}/glance.sqlite
[oslo_concurrency]
lock_path = {d}/lock
[key_manager]
# Barbican's stand-in: certificates for image-signature verification from {d}/certs (see there)
backend = glance_test_keymanager.DirectoryKeyManager
[paste_deploy]
# "keystone" as a real deployment has it, with the auth_token filter replaced (see glance-api-paste.ini)
flavor = keystone
config_file = {d}/glance-api-paste.ini
"""

GLANCE_PASTE = """\
[composite:glance-api-keystone]
paste.composite_factory = glance.api:root_app_factory
/: api
/healthcheck: healthcheck

[composite:api]
paste.composite_factory = glance.api:pipeline_factory
keystone = http_proxy_to_wsgi versionnegotiation testidentity context rootapp

[composite:rootapp]
paste.composite_factory = glance.api:root_app_factory
/: apiversions
/v2: apiv2app

[app:apiversions]
paste.app_factory = glance.api.versions:create_resource

[app:apiv2app]
paste.app_factory = glance.api.v2.router:API.factory

[app:healthcheck]
paste.app_factory = oslo_middleware:Healthcheck.app_factory
backends = disable_by_file
disable_by_file_path = {d}/healthcheck_disable

[filter:versionnegotiation]
paste.filter_factory = glance.api.middleware.version_negotiation:VersionNegotiationFilter.factory

[filter:testidentity]
paste.filter_factory = glance_test_identity:filter_factory

[filter:context]
paste.filter_factory = glance.api.middleware.context:ContextMiddleware.factory

[filter:http_proxy_to_wsgi]
paste.filter_factory = oslo_middleware:HTTPProxyToWSGI.factory
"""


class _Server:
    """A server process the tests own: started by start(), stopped (and its scratch dir removed) on exit."""
    proc: subprocess.Popen[bytes] | None
    dir: Path
    _own_dir: bool

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class GlanceServer(_Server):
    """A throw-away Glance on 127.0.0.1: ``with GlanceServer() as g: g.endpoint``."""

    def __init__(self, workdir: Path | None = None, port: int | None = None) -> None:
        self.venv = glance_venv()
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="imagebuild-glance-"))
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "gunicorn.log"

    @property
    def images_dir(self) -> Path:
        return self.dir / "images"

    @property
    def staging_dir(self) -> Path:
        return self.dir / "staging"

    @property
    def certs_dir(self) -> Path:
        """Where the test Glance's key manager finds certificates: ``<uuid>.pem`` (Barbican's stand-in)."""
        return self.dir / "certs"

    def store_certificate(self, uuid: str, pem: bytes) -> None:
        """Keep a certificate as Barbican would, under ``uuid`` (``img_signature_certificate_uuid``)."""
        (self.certs_dir / f"{uuid}.pem").write_bytes(pem)

    def start(self) -> GlanceServer:
        if not venv_ready(self.venv):
            raise RuntimeError(f"no Glance venv at {self.venv}: run .ci/publish-setup first")
        d = self.dir
        for sub in ("images", "staging", "tasks", "lock", "certs"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "glance-api.conf").write_text(GLANCE_CONF.format(d=d))
        (d / "glance-api-paste.ini").write_text(GLANCE_PASTE.format(d=d))
        env = {"PATH": f"{self.venv}/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(d),
               "OS_GLANCE_CONFIG_DIR": str(d), "PYTHONPATH": str(HERE),
               "GLANCE_TEST_CERTS": str(self.certs_dir)}
        subprocess.run([self.venv / "bin" / "glance-manage", "--config-file", d / "glance-api.conf",
                        "db_sync"], env=env, check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=open(d / "db_sync.log", "wb"))  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.venv / "bin" / "gunicorn", "--bind", f"127.0.0.1:{self.port}", "--workers", "1",
             "--worker-class", "gthread", "--threads", "8", "--timeout", "600", "--no-control-socket",
             "--pythonpath", str(HERE), "glance.wsgi.api:application"],
            env=env, cwd=d, stdin=subprocess.DEVNULL, stdout=open(self.log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        _wait_http(self.endpoint + "/healthcheck", self.proc, self.log, timeout=90)
        return self

    def clouds_yaml(self, name: str = "test-glance") -> str:
        """A clouds.yaml for openstacksdk: no Keystone, the image endpoint given directly."""
        return (f"clouds:\n  {name}:\n    auth_type: none\n    auth:\n      endpoint: {self.endpoint}\n"
                f"    image_endpoint_override: {self.endpoint}\n    image_api_version: '2'\n")


# -- ovirt-imageio ---------------------------------------------------------------------------------

def make_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl). Returns (ca, cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\nbasicConstraints = CA:FALSE\n")

    def ssl(*args: str | Path) -> None:
        subprocess.run(["openssl", *map(str, args)], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=imagebuild test CA",
        "-keyout", ca_key, "-out", ca)
    ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr)
    ssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
        "-extfile", ext, "-out", cert)
    return ca, cert, key


IMAGEIO_CONF = """\
[daemon]
run_dir = {d}/run
drop_privileges = false
systemd_enable = false
poll_interval = 0.5

[tls]
enable = true
key_file = {key}
cert_file = {cert}
ca_file = {ca}

[remote]
host = 127.0.0.1
port = {port}

[local]
enable = false

[control]
transport = unix
socket = {d}/run/control.sock

[handlers]
keys = logfile

[logger_root]
level = INFO
handlers = logfile

[handler_logfile]
class = logging.FileHandler
args = ('{d}/daemon.log',)
kwargs = {{}}
formatter = long
"""


class ImageioServer(_Server):
    """A standalone ovirt-imageio daemon on 127.0.0.1 with a throw-away CA."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.venv = imageio_venv()
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="imagebuild-imageio-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "stdout.log"
        self.control_socket = self.dir / "run" / "control.sock"
        self.ca = self.cert = self.key = Path()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> ImageioServer:
        if not venv_ready(self.venv):
            raise RuntimeError(f"no ovirt-imageio venv at {self.venv}: run .ci/publish-setup first")
        (self.dir / "run").mkdir(parents=True, exist_ok=True)
        self.ca, self.cert, self.key = make_ca(self.dir / "pki")
        conf_dir = self.dir / "conf.d"
        conf_dir.mkdir(exist_ok=True)
        (conf_dir / "50-test.conf").write_text(IMAGEIO_CONF.format(
            d=self.dir, key=self.key, cert=self.cert, ca=self.ca, port=self.port))
        self.proc = subprocess.Popen(
            [self.venv / "bin" / "ovirt-imageio", "--conf-dir", self.dir],
            env={"PATH": f"{self.venv}/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            stdin=subprocess.DEVNULL, stdout=open(self.log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not self.control_socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ovirt-imageio did not start:\n{_tail(self.log)}\n"
                                   f"{_tail(self.dir / 'daemon.log')}")
            time.sleep(0.05)
        return self

    # The control API (what vdsm does for the engine) ---------------------------------------------
    def _control(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        import http.client

        class UnixConnection(http.client.HTTPConnection):
            def __init__(self, sock_path: str) -> None:
                super().__init__("localhost", timeout=10)
                self.sock_path = sock_path

            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(10)
                self.sock.connect(self.sock_path)

        conn = UnixConnection(str(self.control_socket))
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=data,
                         headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def add_ticket(self, ticket_id: str, path: Path, size: int, ops: tuple[str, ...] = ("write", "read"),
                   timeout: int = 300) -> None:
        status, body = self._control("PUT", f"/tickets/{ticket_id}", {
            "uuid": ticket_id, "size": size, "url": f"file://{path}", "timeout": timeout,
            "ops": list(ops), "sparse": True})
        if status != 200:
            raise RuntimeError(f"adding ticket failed: {status} {body!r}")

    def get_ticket(self, ticket_id: str) -> dict | None:
        status, body = self._control("GET", f"/tickets/{ticket_id}")
        return json.loads(body) if status == 200 else None

    def remove_ticket(self, ticket_id: str) -> None:
        self._control("DELETE", f"/tickets/{ticket_id}")


def main(argv: list[str]) -> int:
    what = argv[1] if len(argv) > 1 else "glance"
    if what != "glance":
        print("usage: servers.py glance [PORT]", file=sys.stderr)
        return 2
    port = int(argv[2]) if len(argv) > 2 else 9292

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    for s in (signal.SIGINT, signal.SIGTERM):  # also when started in the background (SIGINT ignored)
        signal.signal(s, stop)
    with GlanceServer(port=port) as g:
        print(f"Glance (images API v2) at {g.endpoint}, data in {g.dir}; Ctrl-C stops it.")
        print("clouds.yaml for it (cloud name test-glance):\n")
        print(g.clouds_yaml())
        try:
            while g.proc and g.proc.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
