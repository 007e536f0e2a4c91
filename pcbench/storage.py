"""Where results live: a folder, or a URI that pyarrow's filesystems open (`file://`,
`s3://`, `gs://`, `hdfs://`, ... whatever `pyarrow.fs.FileSystem.from_uri` knows), so that
every Ray node writes trials and checkpoints where the driver and `pcbench report` read them.

A plain path is a local folder (made absolute). A `file://` URI is the same as its path. Any
other URI is remote: pyarrow reads and writes it, and Ray Tune gets the URI as its
`storage_path` (Ray resolves it with pyarrow too, on every node, with that node's credentials).
"""

import contextlib
import posixpath
import re
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from pcbench.errors import UserError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# Object stores: no rename (pyarrow's move there is a copy and a delete), but an object
# appears only once its upload completes, so one upload to the final name is all-or-nothing.
OBJECT_STORES = {"s3", "gcs", "abfs"}
_FIXES = {
    "s3": "check the bucket name, the AWS credentials (AWS_PROFILE or AWS_ACCESS_KEY_ID and "
          "AWS_SECRET_ACCESS_KEY) and the network, or give the region in the URI (?region=...)",
    "gs": "check the bucket name and the Google credentials (GOOGLE_APPLICATION_CREDENTIALS)",
    "gcs": "check the bucket name and the Google credentials (GOOGLE_APPLICATION_CREDENTIALS)",
    "hdfs": "install Java and libhdfs (JAVA_HOME, HADOOP_HOME, ARROW_LIBHDFS_DIR)",
    "abfs": "check the account name and the Azure credentials",
    "file": "a file:// URI takes an absolute path (file:///abs/folder)",
}


def is_uri(value: object) -> bool:
    """`scheme://...` (a `Path` never is: it would have collapsed the `//`)."""
    return isinstance(value, str) and _SCHEME.match(value) is not None


@dataclass(frozen=True)
class Location:
    """A folder on a pyarrow filesystem."""

    fs: pafs.FileSystem
    path: str  # on `fs`: no scheme, no query
    # What Ray's `storage_path` and `from_uri` resolve to the same place: the absolute path of
    # a local folder, else the URI (its query, e.g. ?region=..., kept).
    uri: str

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def local_path(self) -> Path:
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local folder")
        return Path(self.path)

    def join(self, *parts: str) -> "Location":
        path = posixpath.join(self.path, *parts)
        if self.is_local:
            return Location(self.fs, path, path)
        base, sep, query = self.uri.partition("?")
        return Location(self.fs, path, "/".join([base.rstrip("/"), *parts]) + sep + query)

    def __str__(self) -> str:
        return self.uri


@lru_cache(maxsize=16)
def _from_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    # Cached: an s3:// URI without ?region= asks S3 for the bucket's region each time.
    return pafs.FileSystem.from_uri(uri)


def resolve(value: "str | Path | Location", flag: str = "--results") -> Location:
    """A folder or URI as a Location; a URI pyarrow cannot open is a UserError naming the fix
    (nothing is created; no network beyond what `from_uri` itself does, e.g. S3's region)."""
    if isinstance(value, Location):
        return value
    if not is_uri(value):
        path = Path(value).expanduser().resolve()
        return Location(pafs.LocalFileSystem(), path.as_posix(), str(path))
    scheme = _SCHEME.match(value).group(1).lower()
    try:
        fs, path = _from_uri(value)
    except Exception as error:  # ArrowInvalid, OSError: pyarrow's words, first line
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if "Unrecognized filesystem type" in reason:
            raise UserError(f"{flag} {value}: pyarrow has no filesystem for {scheme}://; pass a folder "
                            f"or a file://, s3://, gs:// or hdfs:// URI") from None
        fix = _FIXES.get(scheme, "check the URI and the credentials its filesystem needs")
        raise UserError(f"{flag} {value} cannot be opened ({reason[:200]}); {fix}") from None
    if isinstance(fs, pafs.LocalFileSystem):
        return Location(fs, path, path)
    return Location(fs, path, value)


def write_file(location: Location, data: "bytes | pa.Buffer") -> Location:
    """Write `data` as the file `location`, whole or not at all. Folders with a rename (local,
    HDFS, ...): a temporary name beside it, then `fs.move` (atomic). Object stores: one upload
    straight to the final name, which is atomic there (see OBJECT_STORES)."""
    fs = location.fs
    folder, name = posixpath.split(location.path)
    fs.create_dir(folder, recursive=True)
    if fs.type_name in OBJECT_STORES:
        with fs.open_output_stream(location.path) as stream:
            stream.write(data)
        return location
    staged = posixpath.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with fs.open_output_stream(staged) as stream:
            stream.write(data)
        fs.move(staged, location.path)
    finally:
        if fs.get_file_info(staged).type != pafs.FileType.NotFound:
            fs.delete_file(staged)
    return location


def list_files(location: Location, suffix: str) -> list[str]:
    """Paths (on `location.fs`) of the files directly in the folder ending in `suffix`, sorted;
    hidden (temporary) names left out; none if the folder does not exist."""
    infos = location.fs.get_file_info(pafs.FileSelector(location.path, allow_not_found=True))
    return sorted(info.path for info in infos if info.type == pafs.FileType.File
                  and info.base_name.endswith(suffix) and not info.base_name.startswith((".", "_")))


SQLITE = "sqlite:///"


def sqlite_path(uri: str) -> Path | None:
    """The file of a SQLAlchemy SQLite URL (`sqlite:///rel.db`, `sqlite:////abs.db`), or None
    for any other URI. The one place such URLs are parsed."""
    return Path(uri.removeprefix(SQLITE)) if uri.startswith(SQLITE) else None


def sqlite_uri(path: Path) -> str:
    return f"{SQLITE}{path}"


def sqlite_lock(uri: str):
    """A SQLite database is created (its schema migrated) by the first client that opens it;
    two commands started at once on a new store must not both do it. Other URIs need no lock."""
    path = sqlite_path(uri)
    if path is None:
        return contextlib.nullcontext()
    from filelock import FileLock
    return FileLock(f"{path}.lock")
