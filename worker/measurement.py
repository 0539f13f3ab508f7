"""The code measurement: one SHA-256 over the agent's own Python code, as the enclave reports it.

An attested enclave's evidence binds a code measurement (client.binding), and a verifier accepts
only measurements on its allowlist. The node's default allowlist is the measurement of the code
it ships, so an agent whose code was changed, even by one byte, measures differently and is not
attested until someone allows its measurement on purpose. A real TEE measures the image it boots;
the simulated enclave has no hardware to do so, and this function is its stand-in.

    measurement = "sha256:" + hex SHA-256 over, for every *.py file under worker/ and client/
                  (__pycache__ skipped), sorted by POSIX path relative to the repository root:
                  len(path) 4 bytes big-endian ‖ path (UTF-8) ‖ len(content) 8 bytes big-endian
                  ‖ content

Lengths make the encoding unambiguous: no two trees give the same byte stream. Sorting by path
makes it independent of the file system's directory order.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

MEASURED_PACKAGES = ("worker", "client")
REPO_ROOT = Path(__file__).resolve().parent.parent


def measured_files(root: Path) -> list[tuple[str, Path]]:
    """(POSIX path relative to `root`, file) for every measured file, in measurement order."""
    found = []
    for package in MEASURED_PACKAGES:
        for path in (root / package).rglob("*.py"):
            relative = path.relative_to(root)
            if "__pycache__" in relative.parts or not path.is_file():
                continue
            found.append((relative.as_posix(), path))
    return sorted(found)


@functools.cache
def code_measurement(root: Path | None = None) -> str:
    """"sha256:<hex>" of the agent code under `root` (default: this checkout). Cached: the code
    does not change under a running agent, and hashing it on every challenge would be waste."""
    digest = hashlib.sha256()
    for relative, path in measured_files(REPO_ROOT if root is None else Path(root)):
        name, content = relative.encode("utf-8"), path.read_bytes()
        digest.update(len(name).to_bytes(4, "big") + name)
        digest.update(len(content).to_bytes(8, "big") + content)
    return f"sha256:{digest.hexdigest()}"
