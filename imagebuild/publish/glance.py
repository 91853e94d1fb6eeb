"""Publish to OpenStack Glance (Images API v2) through openstacksdk.

Credentials and endpoints come from the ecosystem's conventions only: ``clouds.yaml`` (``--cloud NAME``
or ``OS_CLOUD``) or the ``OS_*`` variables, all read by openstacksdk itself; nothing secret passes
through imagebuild's arguments or logs.

One publish, in order:
1. find images carrying our ``imagebuild_sha256``: an ``active`` one whose ``os_hash_value`` is ours
   makes this a no-op: nothing is sent, whichever build uploaded those bytes, so a rebuild that changed
   nothing does not churn the store; the copy only gets the proof it lacks (our content digest, our
   signature when one is configured). An unfinished one (``queued``, ``saving``, ``uploading``,
   ``importing``) is either another publish at work, which this one waits for, or the leftover of an
   upload killed too hard to clean up, which is deleted. Its ``imagebuild_uploader``
   (host/boot/pid/start) tells which on this host; another host's upload counts as a leftover once
   ``stale_upload_minutes`` old;
2. create the image record (qcow2/bare, versioned name, os_*/hw_* properties, min_disk from the
   virtual size, min_ram from the recipe, provenance properties, and the image signature when a signing
   certificate is configured, which Glance verifies while it receives the bytes). If another publish of
   the same artifact created its record no later than ours, ours is deleted and this one waits (so two
   simultaneous publishes make one image). Then send the bytes from disk in chunks, through the
   interoperable import (``glance-direct``) where the cloud offers it, a plain upload otherwise;
3. wait for ``active`` and compare Glance's own ``size`` and ``os_hash_value`` (sha512) with ours, and
   the sha512 of the bytes sent with the gate's (taken in the same read as the sha256 that was signed);
4. move the recipe's ``latest_tag`` to its newest image and rotate to the newest ``keep`` images.
Any failure or interrupt in 2-3 deletes the image: nothing is left in queued/saving/importing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..errors import PublishError
from ..events import Reporter
from ..procs import process_token
from ..recipe import Glance
from .artifact import Artifact, PublishResult
from .remote import describe_exception, undo_upload, wait_until
from .rivals import Rival, Survey, find_or_upload, rival_at_work, yield_pause
from .signing import CERT_UUID, ImageSigner
from .signing import PROPERTIES as SIGNATURE_PROPERTIES
from .stream import CHUNK_SIZE, Progress, UploadStream

if TYPE_CHECKING:
    from openstack.connection import Connection
    from openstack.image.v2._proxy import Proxy as Images

# Statuses of an image whose bytes never fully arrived (Glance API v2 image states).
UNFINISHED = ("queued", "saving", "uploading", "importing")
FAILED = ("killed", "deleted", "pending_delete", "deactivated")
UPLOADER = "imagebuild_uploader"  # the process_token of the publish that created the image
CONTENT = "imagebuild_content_sha256"


def glance_properties(artifact: Artifact, settings: Glance, signer: ImageSigner | None = None) -> dict[str, str]:
    """The image properties: how Nova should run it, then the recipe's extras, then provenance, then the
    image signature over the artifact's bytes when ``signer`` is given."""
    signing = sorted(set(settings.properties) & set(SIGNATURE_PROPERTIES))
    if signing:
        raise PublishError(f"{artifact.recipe}: publish.glance.properties sets {', '.join(signing)}: image "
                           "signatures are made by the publish, over the bytes it sends (configure a signing "
                           "certificate: docs/publish.md, Signing)")
    facts = artifact.image
    props = {
        "os_distro": facts.os_distro,
        "os_version": facts.os_version,
        "os_type": facts.os_type,
        "hw_disk_bus": "virtio",
        "hw_vif_model": "virtio",
        "hw_qemu_guest_agent": "yes" if facts.guest_agent else "no",
    }
    props.update(settings.properties)
    # after the recipe's extras: the firmware a store is told to use is only ever what a cell proved
    props.update({"hw_machine_type": facts.machine_type, "hw_firmware_type": facts.firmware,
                  "imagebuild_boot_matrix": ",".join(facts.matrix),
                  "imagebuild_live_checks": ",".join(facts.live_checks),
                  "imagebuild_cloud_seeds": ",".join(facts.cloud_seeds)})
    if facts.cloud:
        props["os_admin_user"] = facts.admin_user  # Nova's set-password acts on it; root is locked
    bus = props["hw_disk_bus"]
    if bus == "scsi" and "scsi" not in facts.disk_buses:
        raise PublishError(f"{artifact.recipe}: asks Glance for hw_disk_bus=scsi, but no passed boot-test cell "
                           f"booted from virtio-scsi (buses proven: {', '.join(facts.disk_buses)})")
    if bus == "scsi":
        props.setdefault("hw_scsi_model", "virtio-scsi")
    # Nova then fails a snapshot whose freeze fails rather than take it unquiesced: ask for that only where
    # the agent froze and thawed the filesystems in the boot test (a recipe may still say "no").
    if facts.quiesce and _yes(props["hw_qemu_guest_agent"]):
        props.setdefault("os_require_quiesce", "yes")
    elif _yes(props.get("os_require_quiesce")):
        raise PublishError(f"{artifact.recipe}: asks Glance for os_require_quiesce, but no passed boot-test cell "
                           "froze and thawed the filesystems through the guest agent (the fsfreeze check)")
    if facts.secure_boot:
        props["os_secure_boot"] = "required"  # Nova: UEFI with Secure Boot enforced (q35, SMM)
    props.update(artifact.provenance())  # last: a recipe cannot fake provenance
    if signer is not None:
        # over the sha256 the gate computed from the file (the same read as the sha512 Glance must report)
        props.update(signer.properties(artifact.sha256))
    return props


def _yes(value: str | None) -> bool:
    """A Glance boolean property as Nova reads it (oslo's bool_from_string)."""
    return str(value).strip().lower() in ("1", "t", "true", "on", "y", "yes")


def connect(cloud: str | None) -> Connection:
    """An openstacksdk connection from clouds.yaml / OS_CLOUD / OS_* (openstacksdk's own rules)."""
    try:
        import openstack
        from openstack import exceptions as os_exc
    except ImportError:
        raise PublishError("openstacksdk is not installed: pip install 'imagebuild[publish]'") from None
    try:
        conn = openstack.connect(cloud=cloud) if cloud else openstack.connect()
    except os_exc.ConfigException as exc:
        where = f"cloud '{cloud}'" if cloud else "the default cloud (OS_CLOUD or OS_* variables)"
        raise PublishError(f"cannot configure OpenStack access for {where}: {describe_exception(exc)}; "
                           "see clouds.yaml in docs/publish.md") from None
    return conn


def images_v2(conn: Connection) -> Images:
    """The cloud's image service, which must speak the Images API v2."""
    from openstack.image.v2._proxy import Proxy

    images = conn.image
    if not isinstance(images, Proxy):
        raise PublishError("this cloud's image service is not Images API v2 (image_api_version: 2)")
    return images


def _list_images(images: Images, **filters: str) -> Iterator[dict[str, Any]]:
    """Images matching Glance v2 list filters, custom properties included.

    openstacksdk's ``images()`` accepts only the filters it knows; Glance itself filters on any
    property (``GET /v2/images?imagebuild_sha256=...``), so this asks through the SDK's session.
    """
    marker = None
    while True:
        params: dict[str, Any] = {"limit": 100, **filters}
        if marker:
            params["marker"] = marker
        resp = images.get("/images", params=params)
        if resp.status_code != 200:
            raise PublishError(f"listing Glance images failed: HTTP {resp.status_code}")
        page = resp.json().get("images", [])
        yield from page
        if not page or "next" not in resp.json():
            return
        marker = page[-1]["id"]


def _delete(images: Images, image_id: str, reporter: Reporter, why: str) -> None:
    """Delete an image and make sure it is gone; raise if it stays."""
    from keystoneauth1 import exceptions as ks_exc
    from openstack import exceptions as os_exc

    reporter.info(f"deleting Glance image {image_id} ({why})")
    reporter.event("glance-delete", image_id=image_id, reason=why)

    def deleted() -> bool:
        try:
            img = images.get_image(image_id)
        except os_exc.NotFoundException:
            return True
        except ks_exc.ConnectFailure:
            return False  # as below: a connection Glance closed; look again
        return img.status in ("deleted", "pending_delete")

    def gone() -> bool:
        try:
            images.delete_image(image_id, ignore_missing=True)
        except ks_exc.ConnectFailure:
            # Glance refused an upload before reading its body (a signature it cannot check fails at
            # once) and closed that connection; the pool's next request on it finds it closed. A new
            # connection is made on the retry.
            return False
        except os_exc.HttpException as exc:
            # 409 while an import task still holds the image; 5xx when Glance is busy failing the
            # interrupted upload itself (e.g. its database row is locked): both pass, so retry.
            if exc.status_code == 409 or (exc.status_code or 0) >= 500:
                return False
            # 400 "status transition from deleted to deleted": a delete already went through (ours,
            # retried, or the upload's own failure path racing it); gone is what was wanted
            if exc.status_code == 400 and deleted():
                return True
            raise
        return deleted()

    wait_until(gone, timeout=120, what=f"Glance to delete image {image_id}", interval=0.5)


def _hash_matches(img: Any, artifact: Artifact) -> tuple[bool, str]:
    """Compare Glance's own record of the bytes with ours: size and os_hash_value."""
    algo, value = img.hash_algo, img.hash_value
    if img.size != artifact.file_size:
        return False, f"Glance stored {img.size} bytes, the artifact has {artifact.file_size}"
    if not algo or not value:
        return False, "Glance reports no os_hash_value for the image"
    if algo == "sha512":
        ours = artifact.sha512
    else:  # a cloud configured with another hashing_algorithm: hash the file that way too
        try:
            h = hashlib.new(algo)
        except ValueError:
            return False, f"Glance hashes with {algo!r}, which this Python cannot compute"
        with open(artifact.path, "rb") as f:
            while chunk := f.read(CHUNK_SIZE):
                h.update(chunk)
        ours = h.hexdigest()
    if value != ours:
        return False, f"Glance's {algo} is {value}, ours is {ours}"
    return True, ""


def _choose_method(settings: Glance, offered: list[str]) -> str:
    if settings.method == "upload":
        return "upload"
    if "glance-direct" in offered:
        return "glance-direct"
    if settings.method == "glance-direct":
        raise PublishError("the recipe asks for the glance-direct import, but this cloud offers only: "
                           + (", ".join(offered) or "no import methods"))
    return "upload"


def _wait_active(images: Images, image_id: str, method: str, timeout: float, *, signed: bool = False) -> Any:
    def check() -> Any:
        img = images.get_image(image_id)
        if img.status == "active":
            return img
        if img.status in FAILED:
            raise PublishError(f"Glance image {image_id} went to '{img.status}' instead of active")
        props = img.properties or {}
        failed = props.get("os_glance_failed_import")
        # A failed import leaves the image queued, or importing with no store left to import to (e.g. a
        # signature that does not verify): either way it will never become active.
        if (method == "glance-direct" and failed and img.status in ("queued", "importing")
                and not props.get("os_glance_importing_to_stores")):
            hint = ("; the image is signed, and an import fails this way when Glance cannot verify the signature "
                    "(its log says why)" if signed else "")
            raise PublishError(f"Glance's import of image {image_id} failed (stores: {failed}): "
                               f"{_import_failure(images, image_id)}{hint}")
        return None

    return wait_until(check, timeout=timeout, what=f"Glance image {image_id} to become active")


def _import_failure(images: Images, image_id: str) -> str:
    """Why an import failed, in Glance's words: the message of the image's last import task (Images API
    2.12, ``GET /v2/images/{id}/tasks``), else a pointer to the log."""
    try:
        resp = images.get(f"/images/{image_id}/tasks")
        tasks = resp.json().get("tasks", []) if resp.status_code == 200 else []
    except Exception:  # an older Glance without the call: the log has it
        tasks = []
    messages = [str(t["message"]) for t in sorted(tasks, key=lambda t: str(t.get("updated_at") or ""))
                if isinstance(t, dict) and t.get("message")]
    return messages[-1][:300] if messages else "see the Glance API log for the reason"


def _glance_time(value: str | None) -> float:
    """Seconds since the epoch of a Glance timestamp (``2026-11-27T08:39:28Z``); 0 if absent."""
    if not value:
        return 0.0
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _survey(images: Images, artifact: Artifact, settings: Glance, reporter: Reporter,
            own_id: str = "") -> Survey:
    survey = Survey()
    for found in _list_images(images, imagebuild_sha256=artifact.sha256):
        if found["id"] == own_id:
            continue
        status = found.get("status")
        if status == "active":
            img = images.get_image(found["id"])
            ok, why = _hash_matches(img, artifact)
            if not ok:
                _delete(images, found["id"], reporter, f"carries our sha256 but {why}")
            elif survey.existing is None or (img.created_at or "") < (survey.existing.created_at or ""):
                survey.existing = img
        elif status in UNFINISHED:
            token = found.get(UPLOADER, "")
            at_work, why = rival_at_work(token, _glance_time(found.get("created_at")),
                                         settings.stale_upload_minutes, f"'{status}'")
            if at_work:
                survey.rivals.append(Rival(found["id"], token, str(status), _glance_time(found.get("created_at"))))
            else:
                _delete(images, found["id"], reporter, why)
    return survey


def _publish_once(images: Images, artifact: Artifact, settings: Glance, reporter: Reporter,
                  rate_limit: int | None, signer: ImageSigner | None) -> tuple[Any, bool, str]:
    """Find the artifact in Glance or upload it, never two copies: (image, created, method)."""
    result, created = find_or_upload(
        lambda: _survey(images, artifact, settings, reporter),
        lambda: _upload(images, artifact, settings, reporter, rate_limit, signer),
        what="Glance image", timeout=settings.timeout_seconds, reporter=reporter)
    if not created:
        reporter.info(f"Glance already has this artifact as {result.name} ({result.id}): nothing to upload")
        return result, False, ""
    image, method = result
    reporter.info(f"Glance image {image.id} is active; size and sha512 match"
                  + (f"; Glance verified its signature (certificate {signer.certificate_uuid})"
                     if signer is not None else ""))
    return image, True, method


def _complete_proof(images: Images, image: Any, artifact: Artifact, signer: ImageSigner | None,
                    reporter: Reporter) -> tuple[str, ...]:
    """On a copy this publish reuses (the same bytes: Glance's size and sha512 are ours), set the proof it
    lacks, without sending a byte: our content digest when it has none, our signature when it carries none
    by our certificate. Its own provenance stays (``imagebuild_build_id`` names the build that uploaded it,
    whose provenance describes these same bytes). Returns the properties set."""
    from openstack import exceptions as os_exc

    resp = images.get(f"/images/{image.id}")
    if resp.status_code != 200:
        raise PublishError(f"reading Glance image {image.id} failed: HTTP {resp.status_code}")
    props = resp.json()
    theirs = props.get(CONTENT)
    if artifact.content_sha256 and theirs and theirs != artifact.content_sha256:
        raise PublishError(f"Glance image {image.id} holds these bytes but records content digest {theirs}; "
                           f"{artifact.output_dir}/manifest.json says {artifact.content_sha256}: one of the two "
                           "builds' manifests is wrong (invoke verify checks it)")
    want: dict[str, str] = {}
    if artifact.content_sha256 and not theirs:
        want[CONTENT] = artifact.content_sha256
    if signer is not None and props.get(CERT_UUID) != signer.certificate_uuid:
        want.update(signer.properties(artifact.sha256))
    if not want:
        return ()
    try:
        images.update_image(image.id, **want)
    except os_exc.HttpException as exc:
        if exc.status_code in (403, 404):  # another project's copy that we may read but not change
            reporter.info(f"⚠ Glance image {image.id} lacks {', '.join(sorted(want))} but cannot be changed "
                          f"by this project: {describe_exception(exc)}")
            return ()
        raise
    reporter.info(f"completed the proof of Glance image {image.id} (no bytes sent): {', '.join(sorted(want))}")
    reporter.event("glance-proof", image_id=image.id, properties=sorted(want))
    return tuple(sorted(want))


def _upload(images: Images, artifact: Artifact, settings: Glance, reporter: Reporter,
            rate_limit: int | None, signer: ImageSigner | None = None) -> tuple[Any, str] | None:
    """Create the image and send the bytes: (image, method), or None when another publish of the
    same artifact turned out to have started first (ours is deleted again)."""
    from openstack import exceptions as os_exc
    from openstack.image.v2.image import Image

    props = glance_properties(artifact, settings, signer)
    try:
        image = Image.new(name=artifact.versioned_name, disk_format="qcow2", container_format="bare",
                          visibility=settings.visibility, tags=list(settings.tags),
                          min_disk=artifact.min_disk_gib, min_ram=artifact.image.min_ram_mib,
                          **props, **{UPLOADER: process_token()}).create(images)
    except os_exc.SDKException as exc:
        raise PublishError(f"Glance refused to create image {artifact.versioned_name}: "
                           f"{describe_exception(exc)}") from None
    reporter.event("glance-created", image_id=image.id, name=artifact.versioned_name)
    method = _choose_method(settings, list(image.image_import_methods or []))
    reporter.info(f"created Glance image {image.id} ({artifact.versioned_name}); sending the bytes "
                  f"by {'the glance-direct import' if method == 'glance-direct' else 'plain upload'}")
    stream: UploadStream | None = None
    try:
        first = _survey(images, artifact, settings, reporter, own_id=image.id).started_no_later(
            _glance_time(image.created_at))
        if first:
            _delete(images, image.id, reporter, f"another publish of this artifact started first ({first})")
            yield_pause()
            return None
        progress = Progress(reporter, "upload", artifact.file_size)
        stream = UploadStream(artifact.path, progress, rate_limit=rate_limit)
        try:
            if method == "glance-direct":
                image.stage(images, data=stream, size=artifact.file_size)
            else:
                resp = image.upload(images, data=stream, size=artifact.file_size)
                os_exc.raise_from_response(resp)
        except os_exc.HttpException as exc:
            if signer is not None and exc.status_code == 400 and "signature" in _glance_reason(exc).lower():
                raise PublishError(f"Glance refused the image's signature: {_glance_reason(exc)}; it checks it "
                                   f"with certificate {signer.certificate_uuid} from its key manager (Barbican): "
                                   f"is that {signer.config.certificate}?") from None
            raise
        progress.done()
        if method == "glance-direct":
            resp = image.import_image(images, method="glance-direct")
            os_exc.raise_from_response(resp)
        img = _wait_active(images, image.id, method, settings.timeout_seconds, signed=signer is not None)
        ok, why = _hash_matches(img, artifact)
        if ok and stream.sha512 != artifact.sha512:  # Glance may hash with another algorithm, read anew
            ok, why = False, f"the bytes sent have sha512 {stream.sha512}, the verified file {artifact.sha512}"
        if not ok:
            if stream.sha512 != artifact.sha512:
                why += " (the file changed while it was being sent)"
            raise PublishError(f"Glance image {image.id} does not hold our bytes: {why}; "
                               "it has been deleted")
        return img, method
    except BaseException as exc:
        # Ours until it is verified: never leave it queued/saving/importing, whatever stopped us.
        why = f"upload did not complete: {type(exc).__name__}"

        def undo() -> None:
            try:
                _delete(images, image.id, reporter, why)
            except Exception as cleanup_exc:  # report both; the first failure is the story
                reporter.info(f"⚠ could not delete Glance image {image.id}: "
                              f"{describe_exception(cleanup_exc)}; delete it by hand")

        undo_upload(exc, undo, f"uploading to Glance failed (image {image.id} was deleted)")
    finally:
        if stream is not None:
            stream.close()


def _glance_reason(exc: Any) -> str:
    """Glance's own words for a refused request: the last line of its error page (``400 Bad Request``,
    then the explanation), never the request."""
    response = getattr(exc, "response", None)
    text = getattr(response, "text", "") or ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else describe_exception(exc)


def _newest_first(images: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(images, key=lambda i: (i.get("imagebuild_built") or "", i.get("created_at") or "",
                                         i["id"]), reverse=True)


def _tend_recipe(images: Images, artifact: Artifact, settings: Glance, image: Any,
                 reporter: Reporter) -> tuple[str, ...]:
    """Move the latest tag and rotate, among this owner's active images of this recipe."""
    if not settings.latest_tag and not settings.keep:
        return ()
    filters = {"imagebuild_recipe": artifact.recipe, "status": "active"}
    if image.owner:
        filters["owner"] = image.owner
    mine = _newest_first(list(_list_images(images, **filters)))
    rotated: list[str] = []
    if settings.keep:
        for old in mine[settings.keep:]:
            if old["id"] == image.id:
                reporter.info(f"⚠ {image.name} is older than the newest {settings.keep} images of "
                              f"{artifact.recipe}; kept because it was published just now")
                continue
            _delete(images, old["id"], reporter, f"rotation: keep the newest {settings.keep}")
            rotated.append(old["id"])
        mine = [i for i in mine if i["id"] not in rotated]
    if settings.latest_tag and mine:
        newest = mine[0]
        for img in mine:
            tags = img.get("tags") or []
            if img["id"] == newest["id"] and settings.latest_tag not in tags:
                images.add_tag(img["id"], settings.latest_tag)
                reporter.info(f"tagged {img['name']} '{settings.latest_tag}'")
            elif img["id"] != newest["id"] and settings.latest_tag in tags:
                images.remove_tag(img["id"], settings.latest_tag)
    return tuple(rotated)


def publish_to_glance(artifact: Artifact, settings: Glance, *, cloud: str | None = None,
                      reporter: Reporter, rate_limit: int | None = None,
                      signer: ImageSigner | None = None) -> PublishResult:
    from keystoneauth1 import exceptions as ks_exc
    from openstack import exceptions as os_exc

    conn = connect(cloud)
    try:
        images = images_v2(conn)
        endpoint = images.get_endpoint() or ""
        image, created, method = _publish_once(images, artifact, settings, reporter, rate_limit, signer)
        updated = () if created else _complete_proof(images, image, artifact, signer, reporter)
        rotated = _tend_recipe(images, artifact, settings, image, reporter)
        extra = {} if created else {"image_build_id": str((image.properties or {}).get("imagebuild_build_id", ""))}
        return PublishResult(target="glance", image_id=image.id, name=image.name, created=created,
                             forced=artifact.forced, location=endpoint, method=method, rotated=rotated,
                             extra=extra, sent_bytes=artifact.file_size if created else 0, updated=updated)
    except (os_exc.SDKException, ks_exc.ClientException) as exc:
        raise PublishError(f"Glance: {describe_exception(exc)}") from None
    finally:
        with suppress(Exception):
            conn.close()
