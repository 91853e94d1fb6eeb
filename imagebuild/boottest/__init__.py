"""Boot test: the image boots as a fresh clone in every cell of its matrix and checks run inside the guest.

A cell is a firmware on a machine type (``bios/pc``, ``bios/q35``, ``uefi/q35``, ``secure-boot/q35``)
with, for a cloud image, the seed a cloud would attach (``nova``, ``ovirt``, ``nocloud`` or ``none``):
the layout claims the cells it can boot (``recipe.CLAIMED_CELLS``), a recipe may narrow them, and the
seed kinds are given to the cells in turn. Cells boot two at a time (two cores, TCG), each a throwaway
overlay on the image (which is only read), on a fresh MAC, with a fresh copy of OVMF's VARS. Checks run
through the QEMU guest agent, and what a cloud user does (log in with the seed's key, sudo) over a real
SSH connection from the host. Besides the image's own checks, each cell proves it booted the way it
claims: the firmware (EFI or not, Secure Boot state read from the EFI variable) and the chipset.

Where to look: ``matrix`` (which cells, side by side, the verdict), ``cell`` (one clone's life),
``agent``, ``ssh``, ``seeds`` (the config drives and NoCloud seed), ``checks/`` (the registered checks:
``invoke checks``), ``results`` (what the manifest records).
"""

from __future__ import annotations

from .cell import CellPlan, cell_spec
from .checks import all_checks, cell_checks, check_names, validate_skips
from .matrix import boot_test, plan_cells
from .results import BootTestResult, CellResult, Check

__all__ = ["BootTestResult", "CellPlan", "CellResult", "Check", "all_checks", "cell_checks", "boot_test", "cell_spec",
           "check_names", "plan_cells", "validate_skips"]
