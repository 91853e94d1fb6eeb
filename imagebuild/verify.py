"""``invoke verify``: a build's output checked offline, from the outside in.

1. ``SHA256SUMS.sig`` verifies with the public key (``--key``, else ``IMAGEBUILD_VERIFY_KEY``, else the
   public half of ``IMAGEBUILD_SIGNING_KEY``), and every file ``SHA256SUMS`` lists has that digest;
2. the artifact is the one the manifest records (sha256, sha512, size), and its content digest, computed
   again from the image, is the manifest's;
3. each statement (``provenance.intoto.jsonl``, ``boot-test.intoto.jsonl``) verifies as a DSSE envelope,
   its subjects are the artifact's digests as just computed, the provenance's recipe, build id,
   packages and archive digests are the manifest's and its byproducts are the SBOMs' digests, and the
   boot-test statement is exactly the one the manifest's boot-test result makes;
4. each SBOM names the image by its digest and lists exactly the manifest's packages.

The first thing that does not hold raises ``VerifyFailed`` (or ``SignatureInvalid``, ``SigningKeyError``)
naming the file and what differs; nothing is written anywhere. With a key, a missing signature is a
failure; without one, signed files cannot be checked and that is a failure too (never a silent pass),
while an unsigned output checks out as "unsigned". ``verify`` returns ``Verified``, which carries the
manifest, from which ``rebuild.rebuild_and_compare`` (``invoke verify --rebuild``) builds the image again
and compares.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .attest.dsse import keyid, load_public_key, verify_file, verify_statement
from .attest.errors import VerifyFailed
from .attest.outputs import BOOT_TEST, CYCLONEDX, PROVENANCE, SIGNATURE, SPDX, SUMS, read_sums, statement_of
from .attest.sbom import validate_sbom
from .attest.statement import SLSA_PROVENANCE, STATEMENT_TYPE, boot_test
from .content_digest import UnreadableImage, content_sha256
from .digest import hash_file
from .events import NULL_REPORTER, Reporter
from .manifest import MANIFEST, SCHEMA
from .settings import current

ATTESTATIONS = (PROVENANCE, BOOT_TEST, SPDX, CYCLONEDX)


@dataclass(frozen=True)
class Verified:
    """A build's output that checked out: where, the artifact's digests, whether it was signed (and by
    which key), and one line per check made."""

    directory: Path
    artifact: Path
    sha256: str
    content_sha256: str
    signed: bool
    keyid: str | None
    checked: tuple[str, ...]
    manifest: Mapping[str, Any] = field(repr=False, compare=False)

    def to_data(self) -> dict[str, Any]:
        return {"directory": str(self.directory), "artifact": self.artifact.name, "sha256": self.sha256,
                "content_sha256": self.content_sha256, "signed": self.signed, "keyid": self.keyid,
                "checked": list(self.checked)}

    def summary(self) -> str:
        how = (f"signed by key {self.keyid[:16]}" if self.keyid
               else "UNSIGNED: consistent, but anyone could have written it")
        return "\n".join([f"{self.directory}: verified ({how})", *(f"  {line}" for line in self.checked)])


def verify(target: Path | str, *, key: Path | str | None = None, reporter: Reporter = NULL_REPORTER) -> Verified:
    """Check the output directory ``target`` (or the image in one, or a recipe name: its build in
    ``output/RECIPE/``) offline, with the public key ``key`` (default: the configured one)."""
    directory, manifest, image = find_output(Path(target))
    return check_output(directory, manifest, image, public_key=verification_key(key), reporter=reporter)


def find_output(target: Path) -> tuple[Path, dict[str, Any], Path]:
    """(the output directory, its manifest, its artifact) for a directory, an image in one, or a recipe
    name whose build is in ``output/``."""
    if not target.exists() and len(target.parts) == 1 and (current().output / target.name).is_dir():
        target = current().output / target.name
    if target.is_dir():
        directory = target
    elif target.is_file():
        directory = target.parent
    else:
        raise VerifyFailed("no such file or directory", file=target)
    path = directory / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise VerifyFailed(f"no {MANIFEST}: not the output directory of a build", file=directory) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VerifyFailed(f"cannot read: {getattr(exc, 'strerror', None) or exc}", file=path) from None
    except ValueError as exc:
        raise VerifyFailed(f"not valid JSON ({exc})", file=path) from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise VerifyFailed("not a build manifest (unknown schema)", file=path)
    artifact = manifest.get("artifact")
    if not isinstance(artifact, dict) or not isinstance(artifact.get("file"), str) or "/" in artifact["file"] \
            or not artifact.get("sha256"):
        raise VerifyFailed("no artifact file and sha256 recorded", file=path)
    image = directory / artifact["file"]
    if target.is_file() and target.resolve() != image.resolve():
        raise VerifyFailed(f"not the artifact of this build: the manifest beside it names {artifact['file']}",
                           file=target)
    return directory, manifest, image


def verification_key(key: Path | str | None) -> Path | None:
    """The public key to check with: ``key``, else ``IMAGEBUILD_VERIFY_KEY``, else the signing key
    (its public half). Loaded now, so a bad key is named before anything is read."""
    settings = current()
    path = Path(key) if key is not None else settings.verify_key or settings.signing_key
    if path is not None:
        load_public_key(path)
    return path


def check_output(directory: Path, manifest: Mapping[str, Any], image: Path, *, public_key: Path | None,
                 reporter: Reporter = NULL_REPORTER) -> Verified:
    """Every offline check, in order; the first that fails raises."""
    checked: list[str] = []

    def done(line: str) -> None:
        checked.append(line)
        reporter.info(f"✓ {line}")

    sums_path = directory / SUMS
    if not sums_path.is_file():
        raise VerifyFailed("not found: nothing records the files' digests", file=sums_path)
    signature = directory / SIGNATURE
    if signature.exists():
        if public_key is None:
            raise VerifyFailed("the output is signed but there is no public key to check it with: give --key "
                               "PUBKEY or set IMAGEBUILD_VERIFY_KEY", file=signature)
        verify_file(sums_path, public_key)
        done(f"{SIGNATURE}: a good signature of {SUMS}")
    elif public_key is not None:
        raise VerifyFailed(f"not found: the output is not signed (or the signature was removed), and a key "
                           f"({public_key}) was given", file=signature)
    listed = read_sums(sums_path)
    for name in (MANIFEST, image.name):
        if name not in listed:
            raise VerifyFailed(f"does not list {name}", file=sums_path)
    present = [name for name in ATTESTATIONS if (directory / name).exists()]
    for name in present:
        if name not in listed:
            raise VerifyFailed(f"{name} is here but not in {SUMS}: added after the build?", file=sums_path)
    actual: dict[str, str] = {}
    sha512 = ""
    for name, want in listed.items():
        path = directory / name
        if "/" in name or not path.is_file():
            raise VerifyFailed(f"{name} is listed but {'not a plain file name' if '/' in name else 'missing'}",
                               file=sums_path)
        digests = hash_file(path, ("sha256", "sha512") if name == image.name else ("sha256",))
        if digests["sha256"] != want:
            raise VerifyFailed(f"its sha256 is {digests['sha256']}, {SUMS} lists {want}: changed after the "
                               "build", file=path)
        actual[name] = digests["sha256"]
        if name == image.name:
            sha512 = digests["sha512"]
    done(f"{SUMS}: {len(listed)} files, each with its listed sha256")

    recorded = manifest["artifact"]
    manifest_path = directory / MANIFEST
    for what, have in (("sha256", actual[image.name]), ("sha512", sha512), ("file_size", image.stat().st_size)):
        if what in recorded and recorded[what] != have:
            raise VerifyFailed(f"{image.name}: the manifest records {what} {recorded[what]}, the file has "
                               f"{have}: another artifact", file=manifest_path)
    try:
        content = content_sha256(image, str(recorded.get("format") or "qcow2"))
    except UnreadableImage as exc:
        raise VerifyFailed(f"its content cannot be read: {exc}", file=image) from None
    if recorded.get("content_sha256") is not None and recorded["content_sha256"] != content:
        raise VerifyFailed(f"{image.name}: the manifest records content_sha256 {recorded['content_sha256']}, the "
                           f"image's content is {content}", file=manifest_path)
    done(f"{image.name}: sha256 {actual[image.name][:16]}…, content sha256 {content[:16]}…, as the manifest "
         + ("records" if recorded.get("content_sha256") else "records (the content digest was not recorded)"))

    expected = {image.name: {"sha256": actual[image.name], "sha512": sha512},
                f"{image.name.rsplit('.', 1)[0]}.raw": {"sha256": content}}
    want_content = recorded.get("content_sha256") is not None
    packages = _manifest_packages(manifest)
    ident = keyid(load_public_key(public_key)) if public_key is not None else None
    if present:
        statement = _statement(directory / PROVENANCE, public_key)
        _check_subjects(directory / PROVENANCE, statement, expected, want_content)
        _check_provenance(directory / PROVENANCE, statement, manifest, packages, actual)
        done(f"{PROVENANCE}: " + ("signature good; " if ident else "unsigned; ")
             + "its subjects are this artifact, its recipe, packages and byproducts the manifest's")
        boot_path = directory / BOOT_TEST
        boot = manifest.get("boot_test")
        if isinstance(boot, Mapping) and boot.get("cells"):
            statement = _statement(boot_path, public_key)
            _check_subjects(boot_path, statement, expected, want_content)
            _same(boot_path, statement, boot_test(manifest, content_sha256=content if want_content else None),
                  "the statement the manifest's boot_test result makes")
            passed = [c["cell"] for c in statement["predicate"]["cells"] if c.get("passed")]
            done(f"{BOOT_TEST}: " + ("signature good; " if ident else "unsigned; ")
                 + f"passed in {', '.join(passed) or 'no cell'}, as the manifest records")
        elif boot_path.exists():
            raise VerifyFailed("the manifest has no boot-test result for it to attest", file=boot_path)
        for name in (SPDX, CYCLONEDX):
            if (directory / name).exists():
                _check_sbom(directory / name, name, actual[image.name], packages)
                done(f"{name}: valid {'SPDX 2.3' if name == SPDX else 'CycloneDX 1.6'}, names the artifact by its "
                     f"sha256 and lists the manifest's {len(packages)} packages")
    elif public_key is not None:
        raise VerifyFailed("not found: a key was given, but the build wrote no attestations",
                           file=directory / PROVENANCE)
    else:
        done("no attestations (a build from before they were written): the manifest and SHA256SUMS only")
    return Verified(directory=directory, artifact=image, sha256=actual[image.name], content_sha256=content,
                    signed=public_key is not None, keyid=ident, checked=tuple(checked), manifest=manifest)


# --- the statements -------------------------------------------------------------------------------------

def _statement(path: Path, public_key: Path | None) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise VerifyFailed("not found, though the build wrote its other attestations", file=path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise VerifyFailed(f"cannot read: {getattr(exc, 'strerror', None) or exc}", file=path) from None
    doc, is_envelope = statement_of(text, file=path)
    if is_envelope:
        if public_key is None:
            raise VerifyFailed("a signed envelope, but there is no public key to check it with: give --key "
                               "PUBKEY or set IMAGEBUILD_VERIFY_KEY", file=path)
        return verify_statement(doc, public_key, file=path)
    if public_key is not None:
        raise VerifyFailed("a plain statement, not a signed envelope, though the output is signed: replaced "
                           "after signing?", file=path)
    if doc.get("_type") != STATEMENT_TYPE:
        raise VerifyFailed("not an in-toto v1 Statement", file=path)
    return doc


def _check_subjects(path: Path, statement: Mapping[str, Any], expected: Mapping[str, Mapping[str, str]],
                    want_content: bool) -> None:
    subjects = statement.get("subject")
    if not isinstance(subjects, list):
        raise VerifyFailed("no subject list", file=path)
    seen = set()
    for subject in subjects:
        name = str(subject.get("name")) if isinstance(subject, Mapping) else ""
        if name not in expected:
            raise VerifyFailed(f"its subject {name!r} is not this build's artifact ({', '.join(expected)})",
                               file=path)
        digest = subject.get("digest")
        if not isinstance(digest, Mapping) or "sha256" not in digest:
            raise VerifyFailed(f"its subject {name} has no sha256", file=path)
        for alg, value in digest.items():
            if alg not in expected[name]:
                raise VerifyFailed(f"its subject {name} has a {alg} digest, which is not checked here", file=path)
            if value != expected[name][alg]:
                raise VerifyFailed(f"its subject {name} has {alg} {value}, the file's is {expected[name][alg]}: "
                                   "another artifact", file=path)
        seen.add(name)
    missing = [n for n in expected if n not in seen and (want_content or not n.endswith(".raw"))]
    if missing:
        raise VerifyFailed(f"no subject for {', '.join(missing)}", file=path)


def _check_provenance(path: Path, statement: Mapping[str, Any], manifest: Mapping[str, Any],
                      packages: set[tuple[str, str]], actual: Mapping[str, str]) -> None:
    if statement.get("predicateType") != SLSA_PROVENANCE:
        raise VerifyFailed(f"predicateType {statement.get('predicateType')!r}, not SLSA provenance v1", file=path)
    predicate = statement.get("predicate") or {}
    build = predicate.get("buildDefinition") or {}
    run = predicate.get("runDetails") or {}
    _same(path, (build.get("externalParameters") or {}).get("recipe"), manifest.get("recipe"),
          "manifest.json's recipe", where="buildDefinition.externalParameters.recipe")
    invocation = (run.get("metadata") or {}).get("invocationId")
    if invocation != manifest.get("build_id", ""):
        raise VerifyFailed(f"invocationId {invocation!r}, the manifest's build_id is {manifest.get('build_id')!r}",
                           file=path)
    deps = build.get("resolvedDependencies") or []
    purls = [d["uri"] for d in deps if isinstance(d, Mapping) and str(d.get("uri", "")).startswith("pkg:")
             and not str(d["uri"]).startswith("pkg:generic/")]
    _same_packages(path, _purl_packages(path, purls), packages)
    archive = {d["name"].removesuffix(" InRelease"): (d.get("digest") or {}).get("sha256") for d in deps
               if isinstance(d, Mapping) and str(d.get("name", "")).endswith(" InRelease")}
    _same(path, archive, dict(manifest.get("inputs", {}).get("archive", {})), "manifest.json's inputs.archive",
          where="the InRelease digests in resolvedDependencies")
    byproducts = {b.get("name"): (b.get("digest") or {}).get("sha256") for b in run.get("byproducts") or []
                  if isinstance(b, Mapping)}
    sboms = {name: actual[name] for name in (SPDX, CYCLONEDX) if name in actual}
    _same(path, byproducts, sboms, "the SBOM files' sha256", where="runDetails.byproducts")


# --- the SBOMs -------------------------------------------------------------------------------------------

def _check_sbom(path: Path, name: str, sha256: str, packages: set[tuple[str, str]]) -> None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise VerifyFailed(f"cannot read it as JSON: {exc}", file=path) from None
    validate_sbom(path, name, error=VerifyFailed)  # the format's own check (the build does not run it: sbom.py)
    if name == SPDX:
        image_ids = {r.get("relatedSpdxElement") for r in doc.get("relationships", [])
                     if r.get("relationshipType") == "DESCRIBES"}
        images = [p for p in doc.get("packages", []) if p.get("SPDXID") in image_ids]
        image_sha = {c.get("checksumValue") for p in images for c in p.get("checksums", [])
                     if c.get("algorithm") == "SHA256"}
        purls = [r.get("referenceLocator", "") for p in doc.get("packages", []) if p.get("SPDXID") not in image_ids
                 for r in p.get("externalRefs", []) if r.get("referenceType") == "purl"]
    else:
        top = (doc.get("metadata") or {}).get("component") or {}
        image_sha = {h.get("content") for h in top.get("hashes", []) if h.get("alg") == "SHA-256"}
        purls = [c.get("purl", "") for c in doc.get("components", [])]
    if image_sha != {sha256}:
        raise VerifyFailed(f"names the image by sha256 {', '.join(sorted(map(str, image_sha))) or '(none)'}, the "
                           f"artifact's is {sha256}", file=path)
    _same_packages(path, _purl_packages(path, purls), packages)


def _manifest_packages(manifest: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(str(k), str(v)) for k, v in (manifest.get("inputs", {}).get("packages") or {}).items()}


def _purl_packages(path: Path, purls: Iterable[str]) -> set[tuple[str, str]]:
    """(name, version) as the manifest keys them: ``name``, or ``name:arch`` for a foreign architecture
    (``customize.packages.parse_dpkg_status``)."""
    from packageurl import PackageURL

    out = set()
    for text in purls:
        try:
            ref = PackageURL.from_string(text)
        except ValueError:
            raise VerifyFailed(f"{text!r} is not a package URL", file=path) from None
        arch = dict(ref.qualifiers or {}).get("arch", "")
        out.add((ref.name if arch in ("", "all", "amd64") else f"{ref.name}:{arch}", ref.version or ""))
    return out


def _same_packages(path: Path, have: set[tuple[str, str]], want: set[tuple[str, str]]) -> None:
    if have == want:
        return
    extra, missing = sorted(have - want), sorted(want - have)

    def show(items: list[tuple[str, str]]) -> str:
        return ", ".join(f"{n} {v}" for n, v in items[:5]) + (f" (and {len(items) - 5} more)" if len(items) > 5 else "")

    parts = ([f"not in the manifest: {show(extra)}"] if extra else []) + \
            ([f"in the manifest but not here: {show(missing)}"] if missing else [])
    raise VerifyFailed("its packages differ from manifest.json's inputs.packages: " + "; ".join(parts), file=path)


# --- differences -----------------------------------------------------------------------------------------

def _same(path: Path, have: Any, want: Any, what: str, *, where: str = "it") -> None:
    difference = first_difference(have, want)
    if difference is not None:
        at, a, b = difference
        raise VerifyFailed(f"{where} differs from {what}" + (f" at {at}" if at else "")
                           + f": {_short(a)} here, {_short(b)} there", file=path)


def first_difference(a: Any, b: Any, at: str = "") -> tuple[str, Any, Any] | None:
    """(the dotted path of the first place ``a`` and ``b`` differ, a's value, b's value), or None."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in sorted(set(a) | set(b), key=str):
            if key not in a or key not in b:
                return (f"{at}.{key}".lstrip("."), a.get(key, "(missing)"), b.get(key, "(missing)"))
            found = first_difference(a[key], b[key], f"{at}.{key}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            found = first_difference(x, y, f"{at}[{i}]")
            if found:
                return found
        if len(a) != len(b):
            return (f"{at.lstrip('.')} (length)".strip(), len(a), len(b))
        return None
    return None if a == b and type(a) is type(b) else (at.lstrip("."), a, b)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 80 else text[:77] + "..."
