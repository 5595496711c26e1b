"""Training from shard sets served over HTTP (a real server on 127.0.0.1): batches equal to the local
copy's, verification and re-fetch, skipped shards, retried connections, exact resume, the cache cap,
and `eval` reading a benchmark by URL."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

from smartbrush.schemas import files
from smartbrush.schemas.shard_set import iter_shard
from smartbrush.train.shard_cache import ShardCache
from smartbrush.train.stream import BatchStream, ShardSetError, read_shard_set
from tests.test_train_loop import _build, _t2i_set


class _Files(BaseHTTPRequestHandler):
    """Static files with Range requests (as object stores serve them), and faults on demand:
    `server.corrupt[name] = n` serves the file with one byte flipped to its next n GETs (-1: always),
    `server.drop[name] = n` closes the connection of its next n requests without an answer."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self) -> bytes | None:
        name = self.path.lstrip("/")
        srv = self.server
        with srv.lock:
            srv.requests[(self.command, name)] += 1
            if srv.drop.get(name, 0) > 0:
                srv.drop[name] -= 1
                srv.dropped[name] += 1
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return None
        path = os.path.join(srv.root, name)
        if not os.path.isfile(path):
            self.send_error(404)
            return None
        with open(path, "rb") as f:
            data = f.read()
        if self.command == "GET":
            with srv.lock:
                if srv.corrupt.get(name, 0) != 0:
                    srv.corrupt[name] -= srv.corrupt[name] > 0
                    srv.corrupted[name] += 1
                    data = bytearray(data)
                    data[len(data) // 2] ^= 0xFF
                    data = bytes(data)
        return data

    def _answer(self, send_body: bool) -> None:
        data = self._body()
        if data is None:
            return
        start, end = 0, len(data) - 1
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            a, b = rng[len("bytes="):].split("-")
            start, end = int(a or 0), min(int(b) if b else len(data) - 1, len(data) - 1)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if send_body:
            self.wfile.write(data[start:end + 1])

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)


class FileServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, root: str):
        super().__init__(("127.0.0.1", 0), _Files)
        self.root, self.lock = root, threading.Lock()
        self.corrupt, self.drop = {}, {}
        self.requests, self.corrupted, self.dropped = Counter(), Counter(), Counter()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    def gets(self, name: str) -> int:
        return self.requests[("GET", name)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    _build(root, "inp")
    _t2i_set(root)
    server = FileServer(str(root))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"root": root, "server": server, "inp": str(root / "inp"), "t2i": str(root / "t2i")}
    server.shutdown()
    server.server_close()


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(files, "RETRY", files.RetryPolicy(base_delay=0.01))


ARGS = dict(batch_size=4, resolution=64, num_levels=5, seed=0, shards_per_batch=2)


def _streams(served, cache, **kw):
    """(remote stream, local stream) over the same sets."""
    server = served["server"]
    remote = BatchStream([read_shard_set(server.url("inp"), "inpainting", cache)],
                         [read_shard_set(server.url("t2i"), "text_to_image", cache)], **{**ARGS, **kw})
    local = BatchStream([read_shard_set(served["inp"], "inpainting")],
                        [read_shard_set(served["t2i"], "text_to_image")], **{**ARGS, **kw})
    return remote, local


def _same(a: dict, b: dict) -> bool:
    return (a["key"] == b["key"] and a["text"] == b["text"] and a["batch_index"] == b["batch_index"]
            and all(torch.equal(a[k], b[k]) for k in ("image", "level_map", "level", "is_inpainting")))


def _shard_keys(path: str) -> set[str]:
    return {s["__key__"] for s in iter_shard(path, exts={"json"})}


def _cached(cache: ShardCache, ext: str = ".tar") -> list[str]:
    return sorted(n for n in os.listdir(cache.folder) if n.endswith(ext)) if os.path.isdir(cache.folder) else []


def test_batches_from_a_url_equal_the_local_copys(served, tmp_path, caplog):
    cache = ShardCache(str(tmp_path / "cache"), 10**9)
    with caplog.at_level(logging.INFO, "smartbrush.train"):
        remote, local = _streams(served, cache)
    entries = [e for d in (served["inp"], served["t2i"]) for e in json.load(open(os.path.join(d, "manifest.json")))["shards"]]
    need = sum(e["bytes"] for e in entries if e["samples"])
    assert f"rank 0 will read {len(entries)} remote shards, {need} bytes" in caplog.text
    for j in range(8):
        assert _same(remote.batch(j), local.batch(j))
    # what is cached is byte for byte the served shard
    for s in remote.shards["inpainting"]:
        path = cache.path(s)
        assert open(path, "rb").read() == open(os.path.join(served["inp"], s["name"]), "rb").read()
        assert s["crc32"] == next(e["crc32"] for e in entries if e["name"] == s["name"])
    # DataLoader workers (each prefetching in its own threads) from a fresh cache, and resumed at batch 3
    fresh = ShardCache(str(tmp_path / "cache2"), 10**9)
    remote2, _ = _streams(served, fresh, start_batch=3)
    loader = torch.utils.data.DataLoader(remote2, batch_size=None, num_workers=2)
    assert all(_same(b, local.batch(3 + i)) for i, b in zip(range(5), loader))
    # a warm cache fetches nothing: the GETs of the shards do not move
    warm, _ = _streams(served, ShardCache(str(tmp_path / "cache2"), 10**9))
    server, before = served["server"], Counter(served["server"].requests)  # after reading the first sample
    assert all(_same(warm.batch(j), local.batch(j)) for j in range(3, 8))
    shard_gets = {k: v for k, v in server.requests.items() if k[0] == "GET" and k[1].endswith(".tar")}
    assert shard_gets == {k: v for k, v in before.items() if k[0] == "GET" and k[1].endswith(".tar")}


def test_a_corrupted_shard_is_caught_and_fetched_again(served, tmp_path):
    server = served["server"]
    name = "inp/" + sorted(n for n in os.listdir(served["inp"]) if n.endswith(".tar"))[1]
    server.corrupt[name] = 1  # the bad bytes once, then the good ones
    cache = ShardCache(str(tmp_path / "cache"), 10**9)
    remote, local = _streams(served, cache)
    shard = next(s for s in remote.shards["inpainting"] if s["url"].endswith(name))
    gets = server.gets(name)
    assert open(cache.path(shard), "rb").read() == open(os.path.join(served["root"], name), "rb").read()
    assert server.corrupted[name] == 1 and server.gets(name) == gets + 2
    assert cache.refetched == 1 and not cache.skipped and not _cached(cache, ".bad")
    assert all(_same(remote.batch(j), local.batch(j)) for j in range(6))


def test_a_shard_that_stays_corrupt_is_skipped_and_counted(served, tmp_path):
    server = served["server"]
    names = sorted(n for n in os.listdir(served["inp"]) if n.endswith(".tar"))
    name = "inp/" + names[2]
    server.corrupt[name] = -1
    try:
        cache = ShardCache(str(tmp_path / "cache"), 10**9)
        remote, local = _streams(served, cache)
        bad_keys = _shard_keys(os.path.join(served["root"], name))
        batches = [remote.batch(j) for j in range(30)]
        picked = [any(s["url"].endswith(name) for s in remote.shards_of(j)[1]["inpainting"]) for j in range(30)]
        assert any(picked) and not all(picked)
        redrawn = 0
        for j, b in enumerate(batches):
            assert not bad_keys & set(b["key"])  # never trained on
            first = [s["url"].endswith(name) for s in remote.shards_of(j)[1]["inpainting"]]
            if all(first):  # every shard drawn was the skipped one: drawn again
                redrawn += 1
                assert b["skipped_shards"] >= len(first) and len(b["key"]) == ARGS["batch_size"]
            else:
                assert b["skipped_shards"] == sum(first)
            if not picked[j]:
                assert _same(b, local.batch(j))  # the other batches are untouched
        assert redrawn > 0
        assert list(cache.skipped) == [server.url(name)] and "CRC-32" in cache.skipped[server.url(name)]
        assert len(_cached(cache, ".bad")) == 1 and server.corrupted[name] == 2
        # another process reading the same cache skips it without fetching and draws the same batches
        gets = server.gets(name)
        again, _ = _streams(served, ShardCache(cache.folder, 10**9))
        assert all(_same(again.batch(j), batches[j]) for j in range(30)) and server.gets(name) == gets
    finally:
        server.corrupt.pop(name, None)


def test_dropped_connections_are_retried(served, tmp_path, fast_retries):
    server = served["server"]
    name = "t2i/" + sorted(n for n in os.listdir(served["t2i"]) if n.endswith(".tar"))[0]
    cache = ShardCache(str(tmp_path / "cache"), 10**9)
    remote, local = _streams(served, cache)
    first = read_shard_set(server.url("inp"), "inpainting", cache)
    server.drop[name] = 2
    shard = next(s for s in remote.shards["text_to_image"] if s["url"].endswith(name))
    assert open(cache.path(shard), "rb").read() == open(os.path.join(served["root"], name), "rb").read()
    assert server.dropped[name] == 2 and not cache.skipped
    assert all(_same(remote.batch(j), local.batch(j)) for j in range(4))
    server.drop["inp/manifest.json"] = 2  # the manifest too
    assert read_shard_set(server.url("inp"), "inpainting", cache) == first
    assert server.dropped["inp/manifest.json"] == 2


def test_a_set_that_cannot_be_reached_fails_at_start_with_its_url(served, tmp_path, fast_retries):
    cache = ShardCache(str(tmp_path / "cache"), 10**9)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/inp"
    with pytest.raises(ShardSetError, match=f"{closed}: cannot be read"):
        read_shard_set(closed, "inpainting", cache)
    missing = served["server"].url("nothing")
    with pytest.raises(ShardSetError, match=f"{missing}: no manifest.json"):
        read_shard_set(missing, "inpainting", cache)
    with pytest.raises(ShardSetError, match="read through a local shard cache"):
        read_shard_set(served["server"].url("inp"), "inpainting")


def test_lru_eviction_keeps_the_cache_under_its_cap(served, tmp_path):
    cache = ShardCache(str(tmp_path / "cache"), 10**9)
    shards = sorted(read_shard_set(served["server"].url("inp"), "inpainting", cache).shards, key=lambda s: s["name"])
    a, b, c = shards[:3]
    cache = ShardCache(str(tmp_path / "cache"), a["bytes"] + b["bytes"] + c["bytes"] - 1)  # two fit, not three
    pa, pb = cache.path(a), cache.path(b)
    cache.path(a)  # a used after b: b is the least recently used
    pc = cache.path(c)
    assert os.path.exists(pa) and not os.path.exists(pb) and os.path.exists(pc) and cache.evicted == 1
    # a stream over every shard with room for two: always under the cap, the same batches as local
    cap = sum(sorted(s["bytes"] for s in shards)[-2:])
    small = ShardCache(str(tmp_path / "small"), cap)
    remote, local = _streams(served, small, shards_per_batch=1)
    for j in range(30):
        assert _same(remote.batch(j), local.batch(j))
        assert sum(os.path.getsize(os.path.join(small.folder, n)) for n in _cached(small)) <= cap
    # evicted shards were fetched again when drawn again
    assert small.evicted > 0 and small.fetched > len(remote.shards["inpainting"]) + len(remote.shards["text_to_image"])
    with pytest.raises(Exception, match="does not fit the shard cache cap"):
        ShardCache(str(tmp_path / "tiny"), a["bytes"] - 1).path(a)


def test_eval_reads_a_benchmark_by_url(served):
    from smartbrush.eval.benchmark import benchmark_info, read_benchmark

    url = served["server"].url("inp")
    remote, local = read_benchmark(url), read_benchmark(served["inp"])
    assert [s.key for s in remote] == [s.key for s in local] and len(local) > 0
    for r, l in zip(remote, local):
        assert np.array_equal(r.image, l.image) and r.meta == l.meta
        assert all(np.array_equal(x, y) for x, y in zip(r.masks, l.masks))
    assert benchmark_info(url)["manifest_sha256"] == benchmark_info(served["inp"])["manifest_sha256"]


@pytest.mark.slow
def test_resume_from_a_url_equals_the_uninterrupted_local_run(served, tmp_path):
    from diffusers import UNet2DConditionModel

    from smartbrush.cli import main

    server = served["server"]

    def run(out, inp, t2i, *extra):
        assert main(["train", "--config", "tiny", "--max-steps", "2", "--checkpoint-every", "1", "--inpainting-shards",
                     inp, "--t2i-shards", t2i, "--out", str(out), *extra]) == 0
        return [json.loads(line) for line in open(out / "logs" / "losses.jsonl")]

    local = run(tmp_path / "local", served["inp"], served["t2i"])
    cache = tmp_path / "cache"
    remote_args = (server.url("inp"), server.url("t2i"), "--cache-dir", str(cache), "--cache-max-gb", "1")
    remote = run(tmp_path / "remote", *remote_args)
    assert remote == local and [r["step"] for r in local] == [1, 2]
    shutil.rmtree(tmp_path / "remote" / "checkpoint-2")
    shutil.rmtree(tmp_path / "remote" / "final")
    assert run(tmp_path / "remote", *remote_args) == local  # resumed at step 1
    unets = [UNet2DConditionModel.from_pretrained(tmp_path / r / "final" / "unet") for r in ("local", "remote")]
    assert all(torch.equal(x, y) for x, y in zip(unets[0].state_dict().values(), unets[1].state_dict().values()))
    lineage = json.load(open(tmp_path / "remote" / "lineage.json"))
    assert [s["path"] for s in lineage["shard_sets"]] == [server.url("inp"), server.url("t2i")]
    cached = [n for n in os.listdir(cache) if n.endswith(".tar")]  # the drawn shards, as served
    assert cached and all(open(cache / n, "rb").read() == open(
        os.path.join(served["root"], "inp" if "-inpainting-" in n else "t2i", n.split("-", 1)[1]), "rb").read()
        for n in cached)
