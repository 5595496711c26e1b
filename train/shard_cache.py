"""A node's local cache of remote shards: each shard fetched whole on first use, verified against its
manifest entry, kept under a size cap with least-recently-used eviction, and read from local disk.

One folder per node, shared by every rank and DataLoader worker on it (they coordinate with file
locks). In the folder:
  KEY.tar   a verified shard (KEY = a hash of its URL and manifest digest, then its name); its
            modification time is its last use, the order in which shards are evicted
  KEY.part  a fetch in progress, created at the shard's full size so that it counts against the cap
  KEY.lock  held while a process fetches KEY (a stale .part is one whose lock nobody holds)
  KEY.bad   a shard that failed verification twice: why; it is skipped (delete the file to retry)
  .lock     held while one process makes room
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import mmap
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

from smartbrush.schemas import files
from smartbrush.schemas.manifest import shard_problem

log = logging.getLogger("smartbrush.train")
CHUNK = 4 << 20
GB = 1e9


def release_clients(url: str) -> None:
    """Close the fsspec client (and its pooled connections) that reads `url`, in this process.
    fsspec keeps one client per filesystem class and process; a forked DataLoader worker drops the
    one it inherits, and closing that copy unregisters the parent's pooled sockets from the event
    loop polling object the two processes share after fork, so the parent's next request on one of
    them waits forever. A client closed after each use leaves nothing to inherit."""
    import fsspec

    fsspec.get_filesystem_class(fsspec.utils.get_protocol(url)).clear_instance_cache()


class ShardCacheError(RuntimeError):
    """The cache cannot hold what it is asked to (a shard larger than the cap)."""


@contextlib.contextmanager
def _flock(path: str, blocking: bool = True) -> Iterator[bool]:
    """An exclusive lock on `path` (created if absent); yields False when `blocking` is off and
    another holder has it. flock conflicts between threads of one process as well (one open file
    description each)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def cache_key(shard: dict) -> str:
    """The cached file's name: a new URL or new content (a new manifest digest) is a new entry."""
    digest = shard.get("crc32") or shard["sha256"]
    h = hashlib.sha256(f"{shard['url']}\n{shard['bytes']}\n{digest}".encode()).hexdigest()[:16]
    name = shard["name"][:-len(".tar")] if shard["name"].endswith(".tar") else shard["name"]
    return f"{h}-{name}"


class ShardCache:
    """Remote shards on local disk. `path(shard)` returns the local path of a verified copy, fetching
    it first if needed, or None for a shard that failed verification twice (reported once per
    process, counted in `skipped`). `shard` is a manifest entry with its URL: {"url", "name",
    "bytes", "crc32" or "sha256"}."""

    def __init__(self, folder: str, max_bytes: int, prefetch_batches: int = 2, fetch_threads: int = 4):
        if max_bytes <= 0:
            raise ValueError(f"shard cache cap must be > 0 bytes, got {max_bytes}")
        self.folder, self.max_bytes = os.path.abspath(folder), int(max_bytes)
        self.prefetch_batches, self.fetch_threads = prefetch_batches, fetch_threads
        self.fetched, self.fetched_bytes, self.refetched, self.evicted = 0, 0, 0, 0
        self.skipped: dict[str, str] = {}  # url -> why, this process

    def __repr__(self) -> str:
        return f"ShardCache({self.folder!r}, max {self.max_bytes / GB:.2f} GB)"

    def _file(self, shard: dict, suffix: str) -> str:
        return os.path.join(self.folder, cache_key(shard) + suffix)

    def path(self, shard: dict) -> str | None:
        final = self._file(shard, ".tar")
        if _size(final) == shard["bytes"]:
            self._touch(final)
            return final
        if shard["url"] in self.skipped:
            return None
        os.makedirs(self.folder, exist_ok=True)
        with _flock(self._file(shard, ".lock")):
            if _size(final) == shard["bytes"]:  # fetched by another worker or rank meanwhile
                self._touch(final)
                return final
            bad = self._file(shard, ".bad")
            if os.path.exists(bad):
                with open(bad) as f:
                    return self._skip(shard, f.read().strip())
            return self._fetch(shard, final, bad)

    def touch(self, shard: dict) -> bool:
        """Mark a shard used now (the LRU order), when it is read from an already open copy; False
        when it has been evicted."""
        return self._touch(self._file(shard, ".tar"))

    @staticmethod
    def _touch(path: str) -> bool:
        now = time.time_ns()  # explicit: the kernel's own timestamps are coarser than a few ms
        try:
            os.utime(path, ns=(now, now))
            return True
        except FileNotFoundError:
            return False

    def _skip(self, shard: dict, why: str) -> None:  # returns None: the path of a skipped shard
        if shard["url"] not in self.skipped:
            log.error("shard %s skipped: %s; its %d samples are not trained on", shard["url"], why,
                      shard.get("nsamples", 0))
        self.skipped[shard["url"]] = why
        return None

    def _fetch(self, shard: dict, final: str, bad: str) -> str | None:
        part = self._file(shard, ".part")
        self._make_room(shard["bytes"], part)
        try:
            problem = None
            for attempt in range(2):
                problem = self._download(shard, part)
                if problem is None:
                    break
                log.warning("shard %s failed verification (%s)%s", shard["url"], problem,
                            "; fetching it again" if attempt == 0 else "")
                self.refetched += attempt == 0
            if problem is not None:
                files.atomic_write_local(bad, f"failed verification twice: {problem}\n".encode())
                return self._skip(shard, f"failed verification twice: {problem}")
            os.replace(part, final)
            self.fetched += 1
            self.fetched_bytes += shard["bytes"]
            return final
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(part)

    def _download(self, shard: dict, part: str) -> str | None:
        """Fetch into `part` (transient errors retried from the start); why it is not the shard, or None."""
        def copy() -> None:
            with files.open_read(shard["url"]) as src, open(part, "r+b") as dst:
                n = 0
                while block := src.read(CHUNK):
                    dst.write(block)
                    n += len(block)
                dst.truncate(n)

        with open(part, "wb") as f:  # reserved at full size: what the cap accounts
            f.truncate(shard["bytes"])
        try:
            files.retry_io(copy, what=f"fetching {shard['url']}")
        finally:
            release_clients(shard["url"])
        with open(part, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return shard_problem(b"", shard)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return shard_problem(data, shard)

    def _make_room(self, nbytes: int, part: str) -> None:
        """Reserve `part` at `nbytes`, evicting least-recently-used shards to stay under the cap."""
        if nbytes > self.max_bytes:
            raise ShardCacheError(f"a shard of {nbytes / GB:.3f} GB does not fit the shard cache cap of "
                                  f"{self.max_bytes / GB:.3f} GB ({self.folder}): raise --cache-max-gb")
        with _flock(os.path.join(self.folder, ".lock")):
            done, in_progress = [], 0
            for name in os.listdir(self.folder):
                path = os.path.join(self.folder, name)
                if name.endswith(".tar"):
                    with contextlib.suppress(FileNotFoundError):
                        st = os.stat(path)
                        done.append((st.st_mtime, st.st_size, path))
                elif name.endswith(".part") and path != part:
                    size = _size(path) or 0
                    with _flock(path[:-len(".part")] + ".lock", blocking=False) as free:
                        if free:  # left by a process that stopped mid-fetch
                            with contextlib.suppress(FileNotFoundError):
                                os.remove(path)
                            continue
                    in_progress += size
            total = in_progress + sum(size for _, size, _ in done)
            for _, size, path in sorted(done):
                if total + nbytes <= self.max_bytes:
                    break
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)  # readers holding it open keep reading it
                    total -= size
                    self.evicted += 1
            if total + nbytes > self.max_bytes:
                log.warning("shard cache %s: %.2f GB of fetches in progress; over the %.2f GB cap for now",
                            self.folder, in_progress / GB, self.max_bytes / GB)
            with open(part, "wb") as f:
                f.truncate(nbytes)

    def report_need(self, shards: list[dict], rank: int) -> None:
        """Say at start how much this rank will fetch against the cap."""
        need = sum(s["bytes"] for s in shards)
        log.info("rank %d will read %d remote shards, %d bytes (%.3f GB), through the shard cache %s (cap %.3f GB)",
                 rank, len(shards), need, need / GB, self.folder, self.max_bytes / GB)
        if need > self.max_bytes:
            log.warning("rank %d needs %.3f GB of shards, more than the %.3f GB cache cap: least-recently-used "
                        "shards will be evicted and fetched again", rank, need / GB, self.max_bytes / GB)


class Prefetcher:
    """Background fetches into a ShardCache (a few threads in each DataLoader worker), so that the
    shards of the next batches are on disk before the batches are made."""

    def __init__(self, cache: ShardCache):
        self.cache = cache
        self.pool = ThreadPoolExecutor(max_workers=cache.fetch_threads, thread_name_prefix="shard-fetch")
        self.pending: dict[str, object] = {}
        self.lock = threading.Lock()

    def submit(self, shards: list[dict]) -> None:
        with self.lock:
            for url in [u for u, f in self.pending.items() if f.done()]:
                del self.pending[url]
            for s in shards:
                if s["url"] not in self.pending and s["url"] not in self.cache.skipped:
                    self.pending[s["url"]] = self.pool.submit(self._fetch, s)

    def _fetch(self, shard: dict) -> None:
        try:
            self.cache.path(shard)
        except Exception as e:  # the batch that needs it fetches it again and raises
            log.debug("prefetch of %s failed: %s: %s", shard["url"], type(e).__name__, e)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

