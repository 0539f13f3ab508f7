"""The browser worker's reads and pure helpers: which model file a tab runs, which catalogue
names that model serves, and the one byte range of the file a request asks for.

A browser worker runs the builtin agent's GGUF (worker/backends/modelfile.py) in WebAssembly and
announces it under the same id and digest, so the node routes it the same jobs and counts their
tokens with the same file.
"""

import re
from dataclasses import dataclass

from worker.backends.modelfile import ModelFile, resolve_model

from .models import CatalogueModel

# As the builtin backend loads it (worker/backends/builtin.py DEFAULT_CONTEXT_LENGTH).
CONTEXT_LENGTH = 2048
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def browser_model() -> ModelFile:
    """The builtin model file, its id and digest (cached in a sidecar: cheap after the first call)."""
    return resolve_model(None)


def model_file_name(model: ModelFile) -> str:
    # wllama only loads URLs ending in ".gguf".
    return f"{model.id}.gguf"


def digest_hex(model: ModelFile) -> str:
    return model.digest.removeprefix("sha256:")


def catalogue_names_for(model: ModelFile) -> list[str]:
    """Active catalogue names whose jobs a worker announcing `model` may be given."""
    return [entry.name for entry in CatalogueModel.objects.filter(active=True, served_model=model.id).order_by("name")
            if model.digest in entry.digests and entry.kind == CatalogueModel.Kind.CHAT]


class RangeNotSatisfiable(ValueError):
    """The request's one range lies wholly past the end of the file (answered 416)."""


@dataclass(frozen=True)
class ByteRange:
    start: int
    end: int  # inclusive, as in Content-Range

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def byte_range(header: str | None, size: int) -> ByteRange | None:
    """The single range of a Range header ("bytes=a-b", "bytes=a-", "bytes=-n") clipped to a file
    of `size` bytes, or None to send the whole file: no header, another unit, several ranges or a
    malformed one (RFC 9110 lets a server ignore any Range). Raises RangeNotSatisfiable."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # a suffix: the last n bytes
        count = int(last)
        if count == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return ByteRange(max(size - count, 0), size - 1)
    start = int(first)
    end = size - 1 if not last else min(int(last), size - 1)
    if last and int(last) < start:
        return None  # invalid: ignored
    if start >= size:
        raise RangeNotSatisfiable(header)
    return ByteRange(start, end)
