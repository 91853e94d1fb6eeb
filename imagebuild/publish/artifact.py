"""What a publish sends and what it reports: the verified artifact with the facts a store advertises, the
result a store returns, and the record of it kept beside the artifact (``published.jsonl``)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
RECORD = "published.jsonl"
GIB = 1024 ** 3


@dataclass(frozen=True)
class ImageFacts:
    """How an image store should describe the guest: the OS from the recipe, the firmware and chipset
    from the boot-test cells that passed (``boot_firmware`` is what is advertised)."""
    os_distro: str
    os_version: str
    os_type: str = "linux"
    machine_type: str = "pc"
    boot_firmware: str = "bios"        # bios, uefi or secure-boot: a passed cell proved it
    min_ram_mib: int = 512
    guest_agent: bool = False
    passed_cells: tuple[str, ...] = ()  # "uefi/q35", ... in matrix order
    disk_buses: tuple[str, ...] = ("virtio",)  # root disk buses a passed cell booted from
    live_checks: tuple[str, ...] = ()  # live operations (vcpu-hotplug, memory-hotplug, balloon, fsfreeze) that passed
    matrix: tuple[str, ...] = ()       # the passed cells with their seeds, "bios/pc+nova", ... ("uefi/q35": no seed)
    cloud: bool = False                # cloud-init set up (cloud.enabled): the user and key come from a seed
    admin_user: str = ""               # a cloud image's default user (root is locked); "" otherwise
    cloud_seeds: tuple[str, ...] = ()  # seed kinds (nocloud, nova, ovirt) a passed cell booted with, sorted

    @property
    def quiesce(self) -> bool:
        """Snapshots may require a quiesced guest: the agent is advertised and freeze/thaw through it passed
        in every passed cell that ran it (at least one did)."""
        return self.guest_agent and "fsfreeze" in self.live_checks

    @property
    def firmware(self) -> str:
        """bios or uefi (how OpenStack's hw_firmware_type names it)."""
        return "bios" if self.boot_firmware == "bios" else "uefi"

    @property
    def secure_boot(self) -> bool:
        return self.boot_firmware == "secure-boot"

    @property
    def ovirt_bios_type(self) -> str:
        """oVirt's BiosType for the advertised firmware and chipset."""
        if self.boot_firmware == "bios":
            return "q35_sea_bios" if self.machine_type == "q35" else "i440fx_sea_bios"
        return "q35_secure_boot" if self.secure_boot else "q35_ovmf"


@dataclass(frozen=True)
class Artifact:
    """A verified build output, ready to publish."""
    output_dir: Path
    path: Path
    recipe: str
    recipe_version: str
    build_id: str
    finished: str                      # ISO 8601, from the manifest
    format: str
    virtual_size: int
    file_size: int
    sha256: str
    sha512: str
    manifest_sha256: str
    image: ImageFacts
    boot_test: str                     # "passed", "failed" or "not-run"
    boot_test_accelerator: str = ""
    forced: bool = False               # published although the boot test did not pass
    publish_settings: dict[str, Any] = field(default_factory=dict)  # the recipe's [publish], as built
    # The proof beside the artifact, "" in outputs from before it was written: the sha256 of the disk the
    # guest sees (manifest artifact.content_sha256) and of the SLSA provenance (as SHA256SUMS lists it).
    content_sha256: str = ""
    provenance_sha256: str = ""

    @property
    def serial(self) -> str:
        """The build's date and serial: the build id without the recipe name in front."""
        prefix = self.recipe + "-"
        return self.build_id[len(prefix):] if self.build_id.startswith(prefix) else self.build_id

    @property
    def versioned_name(self) -> str:
        return f"{self.recipe}-v{self.recipe_version}-{self.serial}"

    @property
    def min_disk_gib(self) -> int:
        return max(1, math.ceil(self.virtual_size / GIB))

    def provenance(self) -> dict[str, str]:
        """Properties that say where an image came from; stores attach them verbatim. The content and
        provenance digests only when the build wrote them (an absent property, never an empty one)."""
        proof = {name: value for name, value in (("imagebuild_content_sha256", self.content_sha256),
                                                 ("imagebuild_provenance_sha256", self.provenance_sha256))
                 if value}
        return {
            "imagebuild_recipe": self.recipe,
            "imagebuild_recipe_version": self.recipe_version,
            "imagebuild_build_id": self.build_id,
            "imagebuild_built": self.finished,
            "imagebuild_sha256": self.sha256,
            "imagebuild_manifest_sha256": self.manifest_sha256,
            "imagebuild_boot_test": self.boot_test,
            "imagebuild_forced": "true" if self.forced else "false",
            **proof,
        }


@dataclass(frozen=True)
class PublishResult:
    target: str                        # "glance" or "ovirt"
    image_id: str
    name: str
    created: bool                      # False: the same artifact was already there (a no-op)
    forced: bool
    location: str = ""                 # the store's endpoint or engine URL (never credentials)
    method: str = ""                   # e.g. glance-direct, upload, imageio
    rotated: tuple[str, ...] = ()      # ids deleted by rotation
    extra: dict[str, str] = field(default_factory=dict)
    sent_bytes: int = 0                # bytes this publish uploaded: 0 when it reused the store's copy
    updated: tuple[str, ...] = ()      # properties this publish set on a reused copy (its proof completed)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rotated"] = list(self.rotated)
        data["updated"] = list(self.updated)
        return data


def record_publish(artifact: Artifact, result: PublishResult) -> None:
    """Append what was published (and whether it was forced) to the output folder's record. ``reused``:
    the store already held these bytes (another build's upload, or this one's), so nothing was sent."""
    entry = {"time": datetime.now(UTC).isoformat(timespec="seconds"), "build_id": artifact.build_id,
             "sha256": artifact.sha256, "boot_test": artifact.boot_test, "reused": not result.created,
             **result.to_json()}
    with open(artifact.output_dir / RECORD, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
