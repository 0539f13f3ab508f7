"""The worker's signing key file (worker/keys.py)."""

import stat

import pytest

from worker.commitment import public_key_text
from worker.keys import key_load_or_create


def test_the_key_is_created_private_once_and_then_reused(tmp_path):
    path = tmp_path / "nested" / "worker-key.pem"
    first = key_load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert public_key_text(key_load_or_create(path)) == public_key_text(first)


def test_a_file_that_is_not_an_ed25519_key_is_refused(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    path = tmp_path / "ec.pem"
    path.write_bytes(generate_private_key(SECP256R1()).private_bytes(Encoding.PEM, PrivateFormat.PKCS8,
                                                                      NoEncryption()))
    with pytest.raises(ValueError, match="Ed25519"):
        key_load_or_create(path)
