"""Verify a Glance image's signature the way Nova does, with cursive itself: run in the test Glance's venv.

    GLANCE_TEST_CERTS=DIR python cursive_verify.py PROPERTIES.json DATA

``PROPERTIES.json`` holds the image's properties as Glance returns them, ``DATA`` the bytes downloaded from
Glance. This is Nova's ``nova/image/glance.py`` (``_get_verifier``, then ``download``): cursive's
``signature_utils.get_verifier`` with the four ``img_signature*`` properties, the certificate fetched from
the key manager (here the test's directory in Barbican's place, ``glance_test_keymanager``), then the data
fed in chunks and ``verify()``. Prints ``verified`` (exit 0) or ``InvalidSignature`` (exit 1); anything
else (a certificate not found, a bad property) is cursive's own exception (exit 2).
"""

import json
import sys

from castellan.key_manager import key_manager_opts
from cryptography.exceptions import InvalidSignature
from cursive import exception as cursive_exception
from cursive import signature_utils
from oslo_config import cfg

CHUNK = 64 * 1024  # Nova reads glance's response in chunks of this order; the size does not matter


def main(properties_path: str, data_path: str) -> int:
    cfg.CONF([], project="imagebuild-cursive-verify", default_config_files=[])
    cfg.CONF.register_opts(key_manager_opts, group="key_manager")
    cfg.CONF.set_override("backend", "glance_test_keymanager.DirectoryKeyManager", group="key_manager")
    with open(properties_path) as f:
        props = json.load(f)
    try:
        verifier = signature_utils.get_verifier(
            context=None,
            img_signature_certificate_uuid=props.get("img_signature_certificate_uuid"),
            img_signature_hash_method=props.get("img_signature_hash_method"),
            img_signature=props.get("img_signature"),
            img_signature_key_type=props.get("img_signature_key_type"))
    except cursive_exception.SignatureVerificationError as exc:
        print(f"SignatureVerificationError: {exc}")
        return 2
    with open(data_path, "rb") as f:
        while chunk := f.read(CHUNK):
            verifier.update(chunk)
    try:
        verifier.verify()
    except InvalidSignature:
        print("InvalidSignature")
        return 1
    print("verified")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
