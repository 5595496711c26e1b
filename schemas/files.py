"""Reading the formats' files without Apache Beam: local paths, and URLs (`https://`, `gs://`,
`s3://`, anything fsspec reads), with transient errors retried; digests (size, sha256, CRC-32).

The corpus jobs write through Beam's FileSystems (pipeline/storage/fileio.py), which shares the retry
policy and the digests defined here; model/, train/ and eval/ read through this module only.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import time
from typing import Callable, NamedTuple, TypeVar

from zlib_ng import zlib_ng

T = TypeVar("T")


def is_url(path: str) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


def local_path(path: str) -> str:
    path = str(path)
    return path[len("file://"):] if path.startswith("file://") else path


def join(base: str, *parts: str) -> str:
    """`base`/parts for a local folder or a URL (URLs always join with '/')."""
    base = str(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(local_path(base), *parts)


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """How reads retry transient I/O errors: `attempts` tries in all, sleeping base_delay * 2**k
    (capped at max_delay) between them. `sleep` is injectable so that tests do not wait."""

    attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 8.0
    sleep: Callable[[float], None] = time.sleep


# The policy every read uses (about 7.5 s of waiting in all before giving up).
RETRY = RetryPolicy()


class TransientIOError(OSError):
    """A transient I/O error that persisted through every retry. It is never turned into a rejected
    record: it fails the job, and a re-run resumes where it stopped."""


# Errors about the path itself: retrying cannot help, the caller decides (e.g. image_missing).
_PERMANENT_OSERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
                       TransientIOError)
_PERMANENT_ERRNOS = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM,
                     errno.ENAMETOOLONG, errno.ELOOP, errno.EINVAL}
# Client errors that are not OSErrors but mean "try again" (google-api-core, urllib3, botocore,
# http.client, aiohttp), matched by class name so that no client library needs to be imported.
_TRANSIENT_NAMES = {"ServiceUnavailable", "InternalServerError", "TooManyRequests", "GatewayTimeout",
                    "BadGateway", "DeadlineExceeded", "RetryError", "ProtocolError", "ReadTimeoutError",
                    "IncompleteRead", "RemoteDisconnected", "EndpointConnectionError",
                    "ConnectionClosedError", "ReadTimeout", "ConnectTimeout", "ClientPayloadError",
                    "ServerDisconnectedError", "ClientOSError", "ServerTimeoutError"}
_TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}


def is_transient(error: BaseException) -> bool:
    """Whether an exception from a read is worth retrying: a timeout, a connection reset, an EIO on
    a network filesystem, a 5xx / 429 from an object store or HTTP server; not a missing, unreadable
    or forbidden path, and not a content error."""
    status = getattr(error, "status", None) or getattr(error, "code", None)
    if isinstance(status, int) and 400 <= status < 600:
        return status in _TRANSIENT_HTTP
    cause = error.__cause__
    if isinstance(error, FileNotFoundError) and cause is not None and not isinstance(cause, FileNotFoundError):
        # fsspec's HTTP filesystem reports any failure to stat a URL (a refused or dropped connection,
        # a 503) as FileNotFoundError(url) raised from the real error, which decides.
        return is_transient(cause)
    if isinstance(error, OSError):
        if isinstance(error, _PERMANENT_OSERRORS) or error.errno in _PERMANENT_ERRNOS:
            return False
        details = getattr(error, "exception_details", None)  # Beam's BeamIOError for batch operations
        if isinstance(details, dict) and details:
            return any(isinstance(e, BaseException) and is_transient(e) for e in details.values())
        return True
    return any(c.__name__ in _TRANSIENT_NAMES for c in type(error).__mro__)


def retry_io(fn: Callable[[], T], *, what: str = "", policy: RetryPolicy | None = None,
             attempts: int | None = None, base_delay: float | None = None) -> T:
    """fn() with transient I/O errors retried with exponential backoff. Other errors propagate at
    once; a transient error still there after the last attempt raises TransientIOError."""
    policy = policy or RETRY
    attempts = max(1, policy.attempts if attempts is None else attempts)
    base_delay = policy.base_delay if base_delay is None else base_delay
    for k in range(attempts):
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            if k == attempts - 1:
                raise TransientIOError(
                    f"{what or 'I/O'}: {type(e).__name__}: {e} (still failing after {attempts} attempts; "
                    "re-run the same command to resume)") from e
            policy.sleep(min(policy.max_delay, base_delay * 2 ** k))
    raise AssertionError("unreachable")


def _fsspec_open(url: str):
    import fsspec  # only for URLs; installed with the ml extra (torch depends on it)

    return fsspec.open(url, "rb").open()


def _open(path: str):
    return _fsspec_open(path) if is_url(path) else open(local_path(path), "rb")


def open_read(path: str):
    """A binary read stream; opening it retries transient errors (reads from it do not)."""
    return retry_io(lambda: _open(path), what=f"opening {path}")


def read_bytes(path: str) -> bytes:
    """A whole file's bytes; transient errors are retried (see RETRY)."""
    def read() -> bytes:
        with _open(path) as f:
            return f.read()

    return retry_io(read, what=f"reading {path}")


def exists(path: str) -> bool:
    if not is_url(path):
        return os.path.exists(local_path(path))
    import fsspec

    fs, inner = fsspec.core.url_to_fs(path)
    return retry_io(lambda: fs.exists(inner), what=f"checking {path}")


class Digest(NamedTuple):
    """A file's size, sha256 (identity and provenance) and CRC-32 (a fast integrity check: at about
    100 GB/s through zlib-ng it costs a reader almost nothing, where sha256 runs at about 1.4 GB/s),
    both as lower-case hex."""

    bytes: int
    sha256: str
    crc32: str


def crc32_hex(data, start: int = 0) -> str:
    return f"{zlib_ng.crc32(data, start):08x}"


class Hasher:
    """Counts, sha256 and CRC-32 of bytes fed in pieces."""

    def __init__(self):
        self.sha256, self.crc, self.bytes = hashlib.sha256(), 0, 0

    def update(self, data) -> None:
        self.sha256.update(data)
        self.crc = zlib_ng.crc32(data, self.crc)
        self.bytes += len(data)

    def digest(self) -> Digest:
        return Digest(self.bytes, self.sha256.hexdigest(), f"{self.crc:08x}")


def digest_bytes(data) -> Digest:
    h = Hasher()
    h.update(data)
    return h.digest()


def digest_stream(stream, chunk: int = 1 << 22) -> Digest:
    h = Hasher()
    while block := stream.read(chunk):
        h.update(block)
    return h.digest()


def digest_file(path: str, opener: Callable[[str], object] = open_read) -> Digest:
    """Digest of a file, streamed (`opener` opens it: this module's by default, Beam's in jobs)."""
    with opener(path) as f:
        return digest_stream(f)


def atomic_write_local(final: str, data: bytes) -> Digest:
    """Write `data` to a local file by rename from a temporary file beside it."""
    final = local_path(final)
    os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
    tmp = f"{final}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return digest_bytes(data)
