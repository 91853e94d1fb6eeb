"""Key manager for the test Glance only: stands in for Barbican, which cannot run here.

Glance verifies an image's signature while it receives the bytes (``glance/location.py``: cursive's
``signature_utils.get_verifier``), and cursive asks castellan's key manager for the certificate named by
``img_signature_certificate_uuid``. A real cloud keeps it in Barbican; this class keeps it as a file,
``$GLANCE_TEST_CERTS/<uuid>.pem``, and hands it to cursive as castellan's own ``X509`` object, so everything
after the lookup (the certificate's public key, its type against ``img_signature_key_type``, the RSA-PSS
verifier over the data) is Glance's and cursive's real code. Glance loads it through castellan's own
``[key_manager] backend`` option (a class path, as castellan allows), set by ``servers.GlanceServer``.

Never part of imagebuild itself: it lives in tests/ and is loaded only by the test Glance.
"""

import os

from castellan.common import exception
from castellan.common.objects import x_509
from castellan.key_manager import key_manager
from cryptography import x509
from cryptography.hazmat.primitives import serialization


class DirectoryKeyManager(key_manager.KeyManager):
    def __init__(self, configuration):
        self.conf = configuration
        self.directory = os.environ["GLANCE_TEST_CERTS"]

    def get(self, context, managed_object_id, metadata_only=False):
        if "/" in managed_object_id or managed_object_id.startswith("."):
            raise exception.ManagedObjectNotFoundError(uuid=managed_object_id)
        path = os.path.join(self.directory, managed_object_id + ".pem")
        try:
            with open(path, "rb") as f:
                pem = f.read()
        except FileNotFoundError:
            raise exception.ManagedObjectNotFoundError(uuid=managed_object_id) from None
        # castellan hands certificates over in DER, as Barbican's does
        der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
        return x_509.X509(der, id=managed_object_id)

    def create_key(self, context, **kwargs):
        raise NotImplementedError

    def create_key_pair(self, context, **kwargs):
        raise NotImplementedError

    def store(self, context, managed_object, **kwargs):
        raise NotImplementedError

    def delete(self, context, managed_object_id, **kwargs):
        raise NotImplementedError

    def add_consumer(self, context, managed_object_id, consumer_data):
        raise NotImplementedError

    def remove_consumer(self, context, managed_object_id, consumer_data):
        raise NotImplementedError
