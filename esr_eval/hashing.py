"""File digests, defined once: the sha256 of a file's bytes, read in chunks.

Contract: standard library only, so every process may import it (the sandbox's model loader, the
data module, the run-folder store) without torch, numpy or pyarrow.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK_BYTES = 1 << 20


def file_sha256(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
