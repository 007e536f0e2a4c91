"""Files written for users appear whole or not at all: write a temporary name, then rename."""

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
