"""`smartbrush laion`: filters, error classes and folds on hand-made values; then the real job end to end
against a local HTTP server serving real JPEGs and broken responses (no network)."""

from __future__ import annotations

import io
import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from smartbrush.pipeline.commands import laion
from smartbrush.pipeline.sources.laion_filter import (Columns, LaionFilters, check_columns, check_row, common_metadata,
                                              filter_table)
from smartbrush.pipeline.sources.laion_fold import error_class, fold_shard, fold_stats, unrecorded_rows
from smartbrush.pipeline.storage.manifest import read_manifest, read_rejected, reconciles
from smartbrush.schemas.shard_sample import decode_jpeg
from smartbrush.pipeline.storage.shards import count_samples, scan_tar
from smartbrush.pipeline.commands.verify import verify_shard_set

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
LAION_SAMPLE = os.path.join(SHARED, "laion_urls_sample", "test_1000.parquet")
COCO_IMAGES = os.path.join(SHARED, "coco_val2017_tiny", "val2017")
F = LaionFilters(min_aesthetic=5.0, max_punsafe=0.5, max_pwatermark=0.5, min_width=100, min_height=100)


# ---------------------------------------------------------------- per-row filter


@pytest.mark.parametrize("row, expected", [
    (("http://a/x.jpg", "a cat", 5.0, 0.5, 0.5, 100, 100), None),  # every bound inclusive
    (("http://a/x.jpg", "a cat", 4.99, 0.0, 0.0, 500, 500), ("filtered", "min_aesthetic_score", "4.99 < 5.0")),
    (("http://a/x.jpg", "a cat", 6.0, 0.51, 0.0, 500, 500), ("filtered", "max_punsafe", "0.51 > 0.5")),
    (("http://a/x.jpg", "a cat", 6.0, 0.0, 0.9, 500, 500), ("filtered", "max_pwatermark", "0.9 > 0.5")),
    (("http://a/x.jpg", "a cat", 6.0, 0.0, 0.0, 99, 500), ("filtered", "min_width", "99 < 100")),
    (("http://a/x.jpg", "a cat", 6.0, 0.0, 0.0, 500, 10), ("filtered", "min_height", "10 < 100")),
    (("http://a/x.jpg", "a cat", float("nan"), 0.0, 0.0, 500, 500), ("filtered", "min_aesthetic_score", "value missing")),
    (("http://a/x.jpg", "a cat", 6.0, None, 0.0, 500, 500), ("filtered", "max_punsafe", "value missing")),
    (("http://a/x.jpg", "a cat", 1.0, 0.9, 0.9, 1, 1), ("filtered", "min_aesthetic_score", "1.0 < 5.0")),  # first wins
    ((None, "a cat", 6.0, 0.0, 0.0, 500, 500), ("rejected", "url_missing", "empty or null URL")),
    (("  ", "a cat", 6.0, 0.0, 0.0, 500, 500), ("rejected", "url_missing", "empty or null URL")),
    (("http://a/x.jpg", "", 6.0, 0.0, 0.0, 500, 500), ("rejected", "caption_missing", "empty or null caption")),
])
def test_check_row(row, expected):
    assert check_row(*row, F) == expected


def test_neutral_filters_are_off_and_let_missing_values_through():
    off = LaionFilters(min_aesthetic=0, max_punsafe=1, max_pwatermark=1, min_width=0, min_height=0)
    assert check_row("http://a/x.jpg", "a cat", None, None, None, None, None, off) is None
    assert check_columns(["URL", "TEXT"], off, Columns(), "f.parquet") is None


def test_check_columns_names_the_missing_column_and_the_columns_found():
    names = ["URL", "TEXT", "WIDTH", "HEIGHT", "punsafe", "pwatermark", "aesthetic"]
    assert check_columns(names, F, Columns(), "f.parquet") == "aesthetic"
    assert check_columns(names + ["AESTHETIC_SCORE"], F, Columns(), "f.parquet") == "AESTHETIC_SCORE"
    with pytest.raises(ValueError) as e:
        check_columns([n for n in names if n != "pwatermark"], F, Columns(), "f.parquet")
    assert str(e.value) == ("f.parquet: required column 'pwatermark' is missing; columns found: "
                            "['URL', 'TEXT', 'WIDTH', 'HEIGHT', 'punsafe', 'aesthetic']")
    with pytest.raises(ValueError, match="'AESTHETIC_SCORE or aesthetic' is missing"):
        check_columns(["URL", "TEXT", "WIDTH", "HEIGHT", "punsafe", "pwatermark"], F, Columns(), "f.parquet")
    with pytest.raises(ValueError, match="required column 'url' is missing"):
        check_columns(names, F, Columns(url="url"), "f.parquet")


def test_filter_table_and_common_metadata():
    table = pa.table({"URL": ["u0", "u1", None, "u3"], "TEXT": ["a", "b", "c", "d"],
                      "AESTHETIC_SCORE": [6.0, 4.0, 6.0, 7.0], "punsafe": [0.1, 0.1, 0.1, 0.1],
                      "pwatermark": [0.1, 0.1, 0.1, 0.7], "WIDTH": [640, 640, 640, 640], "HEIGHT": [480] * 4})
    kept, rejected = filter_table(table, "in.parquet", F, Columns(), "AESTHETIC_SCORE")
    assert kept == [0]
    assert [(r["record_id"], r["kind"], r["reason"], r["input"], r["stage"]) for r in rejected] == [
        ("in.parquet#1", "filtered", "min_aesthetic_score", "in.parquet", "laion"),
        ("in.parquet#2", "rejected", "url_missing", "in.parquet", "laion"),
        ("in.parquet#3", "filtered", "max_pwatermark", "in.parquet", "laion")]
    assert common_metadata([["URL", "hash", "WIDTH", "aesthetic"], ["WIDTH", "hash", "AESTHETIC_SCORE"]]) == [
        "WIDTH", "hash"]


# ---------------------------------------------------------------- img2dataset output fold


@pytest.mark.parametrize("message, reason", [
    ("HTTP Error 404: Not Found", "http_404"),
    ("HTTP Error 503: Service Unavailable", "http_503"),
    ("timed out", "timeout"),
    ("The read operation timed out", "timeout"),
    ("<urlopen error timed out>", "timeout"),
    ("IncompleteRead(1000 bytes read, 3000 more expected)", "truncated"),
    ("Image decoding error", "image_undecodable"),
    ("image too small", "image_too_small"),
    ("Use of image disallowed by X-Robots-Tag directive", "disallowed_by_robots"),
    ("<urlopen error [Errno 111] Connection refused>", "connection_refused"),
    ("<urlopen error [Errno -2] Name or service not known>", "dns_error"),
    ("Remote end closed connection without response", "connection_closed"),
    ("unknown url type: 'ftp2'", "invalid_url"),
    ("something new", "download_error"),
    (None, "download_error"),
])
def test_error_class(message, reason):
    assert error_class(message) == reason


def _row(key, status, error, row):
    return {"key": key, "status": status, "error_message": error, "url": f"http://h/{row}",
            "source_file": "in.parquet", "source_row": row}


def test_fold_shard_and_unrecorded_rows():
    rows = [_row("000000000", "success", None, 3), _row("000000001", "failed_to_download", "HTTP Error 404: Not Found", 5),
            _row("000000002", "failed_to_resize", "Image decoding error", 8)]
    written, rejected = fold_shard(rows, {"000000000"})
    assert written == 1
    assert [(r["record_id"], r["reason"], r["detail"]) for r in rejected] == [
        ("in.parquet#5", "http_404", "HTTP Error 404: Not Found (http://h/5)"),
        ("in.parquet#8", "image_undecodable", "Image decoding error (http://h/8)")]
    with pytest.raises(ValueError, match="no parquet row accounts for"):
        fold_shard(rows, {"000000000", "000000099"})
    missing = unrecorded_rows([("in.parquet", 3), ("in.parquet", 4), ("in.parquet", 5)], rows)
    assert [(r["record_id"], r["reason"]) for r in missing] == [("in.parquet#4", "not_recorded")]


def test_fold_stats():
    stats = [{"count": 3, "successes": 1, "status_dict": {"success": 1, "HTTP Error 404: Not Found": 1,
                                                          "timed out": 1}},
             {"count": 2, "successes": 0, "status_dict": {"The read operation timed out": 2}}]
    assert fold_stats(stats) == {"count": 5, "successes": 1, "failed": {"http_404": 1, "timeout": 3}}


def test_scan_tar_matches_sha_and_count(tmp_path):
    path = str(tmp_path / "x.tar")
    with wds.TarWriter(path) as w:
        for k in ("000000000", "000000001"):
            w.write({"__key__": k, "txt": b"t", "jpg": b"j"})
    import hashlib

    data = open(path, "rb").read()
    import zlib

    assert scan_tar(path) == ((len(data), hashlib.sha256(data).hexdigest(), f"{zlib.crc32(data):08x}"),
                              {"000000000", "000000001"})
    assert count_samples(path) == 2


def test_fold_outputs_accounts_for_rows_img2dataset_lost(tmp_path):
    """Hand-made img2dataset output: shard 00001 (the short last one) lacks a row for list row 3."""
    out = str(tmp_path)
    pq.write_table(pa.table({"URL": [f"http://h/{i}" for i in range(5)], "TEXT": list("abcde"),
                             "source_file": ["in.parquet"] * 5, "source_row": [10, 11, 12, 13, 14]}),
                   tmp_path / "list.parquet")
    shard_rows = {0: [_row("00", "success", None, 10), _row("01", "failed_to_download", "timed out", 11),
                      _row("02", "success", None, 12)],
                  1: [_row("10", "success", None, 14)]}
    for shard, rows in shard_rows.items():
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"0000{shard}.parquet")
        with wds.TarWriter(str(tmp_path / f"0000{shard}.tar")) as w:
            for r in rows:
                if r["status"] == "success":
                    w.write({"__key__": r["key"], "jpg": b"j", "txt": b"t"})
        stats = {"count": len(rows), "successes": sum(r["status"] == "success" for r in rows),
                 "status_dict": {"success": 2, "timed out": 1} if shard == 0 else {"success": 1}}
        (tmp_path / f"0000{shard}_stats.json").write_text(json.dumps(stats))
    shards, written, rejected = laion.fold_outputs(out, str(tmp_path / "list.parquet"), 5, 3)
    assert written == 3 and [(s["name"], s["samples"]) for s in shards] == [("00000.tar", 2), ("00001.tar", 1)]
    assert sorted((r["record_id"], r["reason"]) for r in rejected) == [
        ("in.parquet#11", "timeout"), ("in.parquet#13", "not_recorded")]
    (tmp_path / "00001_stats.json").unlink()
    with pytest.raises(SystemExit, match="1 of 2 img2dataset shards did not finish"):
        laion.fold_outputs(out, str(tmp_path / "list.parquet"), 5, 3)


# ---------------------------------------------------------------- local HTTP server


def _images() -> list[bytes]:
    """Real photographs when ../shared is there, else synthetic JPEGs (gradient + noise)."""
    if os.path.isdir(COCO_IMAGES):
        names = sorted(os.listdir(COCO_IMAGES))[:12]
        return [open(os.path.join(COCO_IMAGES, n), "rb").read() for n in names]
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        h, w = 240 + 8 * i, 320 - 8 * i
        yy, xx = np.mgrid[0:h, 0:w]
        rgb = np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 20 * i)], -1)
        rgb = np.clip(rgb + rng.integers(-20, 20, rgb.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


class _Handler(BaseHTTPRequestHandler):
    images: list[bytes] = []
    slow_seconds = 4.0

    def log_message(self, *args):
        pass

    def _send(self, body: bytes, ctype: str = "image/jpeg", length: int | None = None, headers=()):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path
        if path.startswith("/img/"):
            self._send(self.images[int(path[5:].split(".")[0]) % len(self.images)])
        elif path == "/html":
            self._send(b"<!doctype html><html><body>Not an image</body></html>", "text/html")
        elif path == "/short.jpg":  # a truncated file, served with its (short) length
            self._send(self.images[0][: len(self.images[0]) // 2])
        elif path == "/cut.jpg":  # the connection drops half way through the announced body
            self._send(self.images[1][: len(self.images[1]) // 2], length=len(self.images[1]))
            self.close_connection = True
        elif path == "/slow.jpg":
            time.sleep(self.slow_seconds)
            self._send(self.images[2])
        elif path == "/noai.jpg":
            self._send(self.images[3], headers=[("X-Robots-Tag", "noai")])
        else:
            self.send_error(404)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default 5 can refuse concurrent downloads

    def handle_error(self, request, client_address):
        pass  # the client hung up (the timeout case): nothing to report


@pytest.fixture(scope="module")
def server():
    _Handler.images = _images()
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _captions(n: int) -> list[str]:
    if os.path.exists(LAION_SAMPLE):
        return pq.read_table(LAION_SAMPLE, columns=["TEXT"]).column("TEXT").to_pylist()[:n]
    return [f"a photograph number {i}, with ünïcode and \"quotes\"" for i in range(n)]


GOOD = 12  # rows serving a real image
# broken responses: (url path, expected reason)
BROKEN = [("/missing.jpg", "http_404"), ("/html", "image_undecodable"), ("/short.jpg", "image_undecodable"),
          ("/cut.jpg", "truncated"), ("/slow.jpg", "timeout"), ("/noai.jpg", "disallowed_by_robots"),
          ("REFUSED", "connection_refused")]
# rows failing a filter: ((AESTHETIC_SCORE, punsafe, pwatermark, WIDTH, HEIGHT), expected reason)
FILTERED = [((4.2, 0.1, 0.1, 640, 480), "min_aesthetic_score"), ((6.0, 0.9, 0.1, 640, 480), "max_punsafe"),
            ((6.0, 0.1, 0.8, 640, 480), "max_pwatermark"), ((6.0, 0.1, 0.1, 50, 480), "min_width"),
            ((6.0, 0.1, 0.1, 640, 60), "min_height"), ((3.0, 0.1, 0.1, 640, 480), "min_aesthetic_score")]


def _laion_parquet(path, base: str) -> tuple[pa.Table, dict]:
    """Rows in a shuffled but fixed order: good images, broken URLs, filtered rows, bad input."""
    refused = f"http://127.0.0.1:{_closed_port()}/x.jpg"
    rows = [(f"{base}/img/{i}.jpg", (5.0 + i / 10, 0.1, 0.1, 640, 480), "written") for i in range(GOOD)]
    rows += [(refused if p == "REFUSED" else base + p, (6.0, 0.1, 0.1, 640, 480), reason) for p, reason in BROKEN]
    rows += [(f"{base}/img/{i}.jpg", values, reason) for i, (values, reason) in enumerate(FILTERED)]
    rows += [(None, (6.0, 0.1, 0.1, 640, 480), "url_missing"), (f"{base}/img/0.jpg", (6.0, 0.1, 0.1, 640, 480),
                                                                  "caption_missing")]
    order = np.random.default_rng(1).permutation(len(rows))
    rows = [rows[i] for i in order]
    captions = _captions(len(rows))
    texts = ["" if outcome == "caption_missing" else captions[i] for i, (_, _, outcome) in enumerate(rows)]
    table = pa.table({
        "URL": [u for u, _, _ in rows], "TEXT": texts,
        "WIDTH": pa.array([v[3] for _, v, _ in rows], pa.int64()),
        "HEIGHT": pa.array([v[4] for _, v, _ in rows], pa.int64()),
        "similarity": [0.3] * len(rows), "punsafe": [v[1] for _, v, _ in rows],
        "pwatermark": [v[2] for _, v, _ in rows], "AESTHETIC_SCORE": [v[0] for _, v, _ in rows],
        "hash": pa.array(range(1000, 1000 + len(rows)), pa.int64()),
    })
    pq.write_table(table, path)
    return table, {i: outcome for i, (_, _, outcome) in enumerate(rows)}


def _argv(parquet, out):
    return ["--parquet", str(parquet), "--out", str(out), "--resolution", "64", "--min-width", "100",
            "--min-height", "100", "--samples-per-shard", "8", "--processes", "1", "--threads", "8",
            "--timeout", "2", "--retries", "0"]


def _expected_counts(outcomes: dict) -> dict:
    from collections import Counter

    c = Counter(outcomes.values())
    filtered = {r: c[r] for r in ("min_aesthetic_score", "max_punsafe", "max_pwatermark", "min_width", "min_height")}
    rejected = {r: c[r] for _, r in BROKEN}
    rejected.update(url_missing=1, caption_missing=1)
    return {"inputs": len(outcomes), "written": c["written"], "rejected": dict(sorted(rejected.items())),
            "filtered": dict(sorted(filtered.items()))}


def _samples(out) -> list[dict]:
    urls = [os.path.join(out, s["name"]) for s in read_manifest(str(out))["shards"]]
    return list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))


def test_expand_inputs(tmp_path, monkeypatch):
    from smartbrush.pipeline.sources.laion_filter import expand_inputs

    for name in ("part-1.parquet", "part-0.parquet", "other.txt"):
        (tmp_path / name).write_bytes(b"")
    assert expand_inputs([str(tmp_path / "part-*.parquet"), str(tmp_path / "part-0.parquet"), "x.parquet"]) == [
        str(tmp_path / "part-0.parquet"), str(tmp_path / "part-1.parquet"), "x.parquet"]
    with pytest.raises(ValueError, match="no file matches"):
        expand_inputs([str(tmp_path / "none-*.parquet")])
    monkeypatch.chdir(tmp_path)
    assert expand_inputs(["part-*.parquet"]) == ["part-0.parquet", "part-1.parquet"]


def test_missing_column_fails_at_once(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"URL": ["http://x/1.jpg"], "TEXT": ["t"], "WIDTH": [640], "HEIGHT": [480],
                             "punsafe": [0.1], "AESTHETIC_SCORE": [6.0]}), bad)
    with pytest.raises(SystemExit) as e:
        laion.run(["--parquet", str(bad), "--out", str(tmp_path / "out")])
    assert "required column 'pwatermark' is missing" in str(e.value)
    assert "['URL', 'TEXT', 'WIDTH', 'HEIGHT', 'punsafe', 'AESTHETIC_SCORE']" in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_laion_end_to_end_counts_captions_resume(tmp_path, server):
    parquet, out = tmp_path / "laion.parquet", tmp_path / "out"
    table, outcomes = _laion_parquet(parquet, server)
    manifest = laion.run(_argv(parquet, out))

    # counts: exact per reason, reconciled, and the same in rejected.parquet
    assert manifest["kind"] == "text_to_image"
    assert manifest["counts"] == _expected_counts(outcomes)
    assert reconciles(manifest["counts"])
    rejected = read_rejected(str(out))
    assert {r["record_id"]: r["reason"] for r in rejected} == {
        f"{parquet}#{i}": o for i, o in outcomes.items() if o != "written"}
    assert {r["kind"] for r in rejected if r["reason"].startswith(("min_", "max_"))} == {"filtered"}
    assert verify_shard_set(str(out)) == []

    # samples: one per written row, caption = the row's TEXT, R x R JPEG, metadata carried along
    samples = _samples(out)
    rows = table.to_pylist()
    assert sorted(json.loads(s["json"])["source_row"] for s in samples) == sorted(
        i for i, o in outcomes.items() if o == "written")
    for s in samples:
        meta = json.loads(s["json"])
        row = rows[meta["source_row"]]
        assert s["txt"].decode("utf-8") == row["TEXT"]
        assert meta["url"] == row["URL"] and meta["AESTHETIC_SCORE"] == row["AESTHETIC_SCORE"]
        assert meta["source_file"] == str(parquet) and "task" not in meta  # read as text-to-image
        assert decode_jpeg(s["jpg"]).shape == (64, 64, 3)

    # a finished set re-run: nothing downloaded again, byte-identical manifest
    first = (out / "manifest.json").read_bytes()
    laion.run(_argv(parquet, out))
    assert (out / "manifest.json").read_bytes() == first

    # an interrupted run: shard 00001 half written and without its stats, no manifest yet
    tar = out / "00001.tar"
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    (out / "00001_stats.json").unlink()
    (out / "manifest.json").unlink()
    untouched = {s["name"]: s["sha256"] for s in manifest["shards"] if s["name"] != "00001.tar"}
    resumed = laion.run(_argv(parquet, out))
    assert resumed["counts"] == manifest["counts"]
    assert {s["name"]: s["sha256"] for s in resumed["shards"] if s["name"] != "00001.tar"} == untouched
    keys = [s["__key__"] for s in _samples(out)]
    assert len(keys) == len(set(keys)) == manifest["counts"]["written"]
    assert verify_shard_set(str(out)) == []


def test_everything_filtered_then_other_settings_refused(tmp_path):
    parquet, out = tmp_path / "laion.parquet", tmp_path / "out"
    _, outcomes = _laion_parquet(parquet, "http://127.0.0.1:9")
    manifest = laion.run(_argv(parquet, out) + ["--min-aesthetic", "100"])  # nothing left to download
    c = manifest["counts"]
    assert (c["inputs"], c["written"], c["rejected"]) == (len(outcomes), 0, {"caption_missing": 1, "url_missing": 1})
    assert c["filtered"] == {"min_aesthetic_score": len(outcomes) - 2}
    assert manifest["shards"] == [] and verify_shard_set(str(out)) == []
    with pytest.raises(SystemExit, match=r"config\.filters\.min_aesthetic: folder has 100"):
        laion.run(_argv(parquet, out))
    table = pq.read_table(parquet)
    pq.write_table(table.slice(1), parquet)  # same path, other rows
    with pytest.raises(SystemExit, match="differs in:\n  inputs: folder has"):
        laion.run(_argv(parquet, out) + ["--min-aesthetic", "100"])
