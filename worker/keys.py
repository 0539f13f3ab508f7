"""The worker's Ed25519 signing key: it signs the commitment of every job (worker/commitment.py).

Kept in a PEM file (PKCS#8, mode 0600) so that the worker keeps one identity across restarts;
created on first use. The agent announces the public half in its hello, over the link its token
authenticated, and the node records it with every job the key signs.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import (Encoding, NoEncryption, PrivateFormat,
                                                          load_pem_private_key)

DEFAULT_KEY_FILE = Path("~/.config/peer-cycles/worker-key.pem")


def key_load_or_create(path: Path) -> Ed25519PrivateKey:
    """The key in `path`, or a new one written there (several agents starting at once on one
    machine end up with the same key: the file is created exclusively, the losers read it)."""
    path = path.expanduser()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another agent created it meanwhile: use theirs
        else:
            with os.fdopen(fd, "wb") as file:
                file.write(pem)
            return key
    key = load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key
