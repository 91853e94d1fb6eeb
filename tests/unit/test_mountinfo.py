"""Which filesystem is on `/`, from a /proc/self/mountinfo text (the boot loader's target)."""

from __future__ import annotations

import pytest

from imagebuild.errors import CustomizeFailed
from imagebuild.guest import root_majmin

pytestmark = pytest.mark.unit


def test_root_majmin_takes_the_last_mount_on_root():
    # the mountinfo CI recorded when the bug struck, with an over-mount added
    info = ("30 23 8:17 / / rw,relatime - ext4 /dev/sdb1 rw\n"
            "31 30 0:5 / /dev rw,relatime - devtmpfs /dev rw,size=612920k\n"
            "33 30 0:21 / /proc rw,relatime - proc /proc rw\n"
            "40 30 8:33 / / rw - ext4 /dev/sdc1 rw\n")
    assert root_majmin(info) == "8:33"
    assert root_majmin(info.splitlines(keepends=True)[0]) == "8:17"


def test_no_root_mount_is_an_error():
    with pytest.raises(CustomizeFailed, match="no filesystem is mounted on /"):
        root_majmin("31 30 0:5 / /dev rw - devtmpfs /dev rw\n")
