"""Files: those written for users appear whole or not at all (a temporary name, then a
rename), and checkpoints are identified by their content hash."""

import hashlib
import os
import uuid
from pathlib import Path
from typing import Callable


def write_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(staged_path)` fills a temporary file beside `path`, which then replaces `path`."""
    path = Path(path)
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(staged)
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path


def sha256_of(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
