"""Inpainting sample format v2 (one `levels.png` level map) and v1 (one PNG per level): encoding,
the smartbrush accessors for both, and reading v2 with plain webdataset / wids / PIL as
docs/shard-format.md shows."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from smartbrush.config import RenderConfig, load_schedule
from smartbrush.pipeline.render.ladder import render_ladder, render_level_map
from smartbrush.pipeline.imaging.masks import mask_box, mask_to_rle
from smartbrush.schemas.level_map import decode_level_map, encode_level_map
from smartbrush.schemas.shard_sample import encode_json, sample_level_map, sample_mask, sample_masks, sample_meta, sample_num_levels
from tests.sample_fixtures import encode_masks, encode_masks_v1
from smartbrush.pipeline.render.samples import render_sample
from smartbrush.pipeline.storage.shards import write_shard
from smartbrush.schemas import shard_sample

FINE = load_schedule("smartbrush-fine")


def _exact(size=96) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    m = (xx - 40) ** 2 + (yy - 50) ** 2 <= 20 ** 2
    m[10:14, 30:80] = True  # a thin arm
    return m


def _meta(version: int, schedule=FINE, resolution=96) -> dict:
    meta = {"schema": shard_sample.NAME, "schema_version": version, "task": "inpainting", "instance_id": "k",
            "label": "cup", "captions": [], "resolution": resolution, "mask_schedule": schedule.to_json()}
    if version == 1:
        meta["mask_keys"] = shard_sample.mask_exts(schedule.num_levels)
    return meta


def _samples(exact=None, schedule=FINE) -> tuple[dict, dict]:
    """(v1 sample, v2 sample) holding the same ladder."""
    exact = _exact() if exact is None else exact
    levels = render_ladder(exact, schedule)
    v1 = {"__key__": "k", "jpg": b"j", "json": encode_json(_meta(1, schedule)), **encode_masks_v1(levels)}
    v2 = {"__key__": "k", "jpg": b"j", "json": encode_json(_meta(2, schedule)), **encode_masks(levels)}
    return v1, v2


def test_level_map_png_round_trips_through_every_decoder():
    rng = np.random.default_rng(0)
    maps = [rng.integers(0, 256, (37, 53), dtype=np.uint8), np.full((8, 8), 255, np.uint8),
            render_level_map(_exact(), FINE), np.zeros((1, 1), np.uint8)]
    for level_map in maps:
        data = encode_level_map(level_map)
        assert data == encode_level_map(level_map.copy())  # deterministic
        assert np.array_equal(decode_level_map(data), level_map)
        with Image.open(io.BytesIO(data)) as im:
            assert im.mode == "L" and im.size == level_map.shape[::-1]
            assert np.array_equal(np.asarray(im), level_map)


def test_level_map_encoding_rejects_what_is_not_a_level_map():
    for bad in (np.zeros((4, 4), bool), np.zeros((4, 4), np.int32), np.zeros((4, 4, 3), np.uint8),
                np.zeros((0, 4), np.uint8)):
        with pytest.raises(ValueError):
            encode_level_map(bad)
    with pytest.raises(ValueError):
        decode_level_map(b"\x89PNG not really")
    rgb = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(rgb, format="PNG")
    with pytest.raises(ValueError, match="8-bit grayscale"):
        decode_level_map(rgb.getvalue())


def test_v1_and_v2_read_alike():
    v1, v2 = _samples()
    ladder = render_ladder(_exact(), FINE)
    assert sample_num_levels(v1) == sample_num_levels(v2) == 7
    assert np.array_equal(sample_level_map(v1), sample_level_map(v2))
    for masks in (sample_masks(v1), sample_masks(v2)):
        assert len(masks) == 7 and all(np.array_equal(a, b) for a, b in zip(masks, ladder))
    for s in range(7):
        assert np.array_equal(sample_mask(v1, s), ladder[s]) and np.array_equal(sample_mask(v2, s), ladder[s])
    level_map = sample_level_map(v2)
    assert (level_map == 255).sum() == level_map.size - ladder[-1].sum()
    x0, y0, x1, y1 = mask_box(ladder[0])
    assert (level_map[y0:y1, x0:x1] < 7).all()


def test_accessors_refuse_what_they_cannot_read():
    v1, v2 = _samples()
    for sample in (v1, v2):
        with pytest.raises(ValueError, match="outside 0..6"):
            sample_mask(sample, 7)
        with pytest.raises(ValueError, match="outside 0..6"):
            sample_mask(sample, -1)
    with pytest.raises(ValueError, match="versions? this smartbrush reads"):
        sample_meta({**v2, "json": encode_json({**_meta(2), "schema_version": 3})})
    with pytest.raises(ValueError, match="no levels.png member"):
        sample_masks({k: v for k, v in v2.items() if k != "levels.png"})
    with pytest.raises(ValueError, match="no mask_s3.png member"):
        sample_mask({k: v for k, v in v1.items() if k != "mask_s3.png"}, 3)
    bad = render_level_map(_exact(), FINE)
    bad[50, 40] = 9  # S = 6
    with pytest.raises(ValueError, match=r"values \[9\]"):
        sample_masks({**v2, "levels.png": encode_level_map(bad)})


def _row(mask: np.ndarray) -> dict:
    x0, y0, x1, y1 = mask_box(mask)
    rle = mask_to_rle(mask)
    return {"instance_id": "coco_val_7_8", "source": "coco", "split": "val", "image_id": "7", "annotation_id": "8",
            "image_path": "/x/7.jpg", "category_id": "47", "label": "cup", "captions": [],
            "area": int(mask.sum()), "box_xyxy": [x0, y0, x1, y1],
            "mask_rle_size": rle["size"], "mask_rle_counts": rle["counts"]}


def test_render_sample_writes_v2():
    image = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    mask = np.zeros((90, 120), bool)
    yy, xx = np.mgrid[:90, :120]
    mask[(xx - 50) ** 2 + (yy - 40) ** 2 <= 18 ** 2] = True
    sample = render_sample(image, _row(mask), FINE, RenderConfig(resolution=64))
    assert sorted(sample) == ["jpg", "json", "levels.png"]
    meta = json.loads(sample["json"])
    assert meta["schema_version"] == shard_sample.VERSION == 2 and "mask_keys" not in meta
    assert set(meta) <= set(shard_sample.META_KEYS)
    assert set(shard_sample.META_KEYS) - set(meta) <= {"image_sha256", "crop_policy"}  # filled by the build
    level_map = decode_level_map(sample["levels.png"])
    assert level_map.shape == (64, 64) and np.array_equal(render_level_map(level_map == 0, FINE), level_map)
    assert list(mask_box(level_map == 0)) == meta["box_crop_xyxy"]


@pytest.fixture()
def v2_shard(tmp_path):
    samples = []
    for i, exact in enumerate([_exact(), np.roll(_exact(), 9, axis=1)]):
        jpg = io.BytesIO()
        Image.fromarray(np.full((96, 96, 3), 40 * i, np.uint8)).save(jpg, format="JPEG")
        members = {"jpg": jpg.getvalue(), "json": encode_json({**_meta(2), "instance_id": f"k{i}"}),
                   "levels.png": encode_level_map(render_level_map(exact, FINE))}
        samples.append((f"k{i}", members))
    info, _ = write_shard(str(tmp_path), "inpainting-000000.tar", samples)
    return str(tmp_path / "inpainting-000000.tar"), {k: render_ladder(e, FINE) for k, e in
                                                     zip(["k0", "k1"], [_exact(), np.roll(_exact(), 9, axis=1)])}


def test_plain_webdataset_reads_v2(v2_shard):
    import webdataset as wds

    path, ladders = v2_shard
    n = 0
    # docs/shard-format.md's recipe, as written there
    levels_png = wds.handle_extension("levels.png", lambda b: np.asarray(Image.open(io.BytesIO(b))))
    for sample in wds.WebDataset(path, shardshuffle=False).decode(levels_png, "pil"):
        level_map = sample["levels.png"]  # uint8 H x W; mask at level s = level_map <= s
        assert level_map.dtype == np.uint8 and level_map.shape == (96, 96)
        masks = [level_map <= s for s in range(len(sample["json"]["mask_schedule"]["levels"]))]
        assert sample["jpg"].mode == "RGB" and sample["jpg"].size == (96, 96)
        assert all(np.array_equal(a, b) for a, b in zip(masks, ladders[sample["__key__"]], strict=True))
        n += 1
    assert n == 2


def test_wids_reads_v2(v2_shard):
    import wids

    path, ladders = v2_shard
    dataset = wids.ShardListDataset([{"url": path, "nsamples": 2}])
    for i in range(len(dataset)):
        sample = dataset[i]
        level_map = np.asarray(sample[".levels.png"])
        meta = sample[".json"] if isinstance(sample[".json"], dict) else json.loads(sample[".json"])
        S = len(meta["mask_schedule"]["levels"]) - 1
        assert np.array_equal(level_map <= S, ladders[sample["__key__"]][S])
        assert np.array_equal(level_map <= 2, ladders[sample["__key__"]][2])


def test_pil_and_tarfile_read_v2(v2_shard):
    path, ladders = v2_shard
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert names == ["k0.jpg", "k0.json", "k0.levels.png", "k1.jpg", "k1.json", "k1.levels.png"]
        level_map = np.asarray(Image.open(tar.extractfile("k1.levels.png")))
    assert np.array_equal(level_map <= 3, ladders["k1"][3])


def test_hf_datasets_reads_v2(v2_shard):
    datasets = pytest.importorskip("datasets")
    path, ladders = v2_shard
    ds = datasets.load_dataset("webdataset", data_files={"train": path}, split="train")
    row = ds[0]
    assert np.array_equal(np.asarray(row["levels.png"]) <= 1, ladders["k0"][1])


def _maps_of_every_layout() -> list[np.ndarray]:
    """Level maps whose box rows touch the top, the bottom, both, neither, or that hold no box."""
    rng = np.random.default_rng(1)
    out = []
    for y0, y1 in [(0, 5), (20, 64), (0, 64), (30, 31), (10, 40), (0, 0)]:
        m = np.full((64, 48), 255, np.uint8)
        m[y0:y1, 5:40] = rng.integers(0, 7, (y1 - y0, 35), dtype=np.uint8)
        out.append(m)
    return out + [render_level_map(np.roll(_exact(), s, axis=0), FINE) for s in (-40, 0, 45)]


def test_level_map_png_fast_path_agrees_with_opencv_and_pil():
    import cv2

    from smartbrush.schemas.level_map import _decode_own_layout

    for level_map in _maps_of_every_layout():
        data = encode_level_map(level_map)
        fast = _decode_own_layout(data)
        assert fast is not None and np.array_equal(fast[0], level_map)
        assert np.array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), level_map)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), level_map)


def _with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """`data` with the body of chunk `kind` replaced (CRC recomputed)."""
    import struct
    import zlib

    pos = 8
    while True:
        (length,) = struct.unpack_from(">I", data, pos)
        if data[pos + 4:pos + 8] == kind:
            chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
            return data[:pos] + chunk + data[pos + 12 + length:]
        pos += 12 + length


def test_a_png_that_does_not_check_out_is_decoded_the_general_way():
    import struct

    from smartbrush.schemas.level_map import _decode_own_layout

    level_map = render_level_map(_exact(), FINE)
    data = encode_level_map(level_map)
    y0, y1, offset, length = struct.unpack(">IIII", data[8 + 25 + 8:8 + 25 + 8 + 16])
    for lie in [(y0 + 1, y1, offset, length), (y0, y1 - 1, offset, length), (y0, y1, offset + 1, length),
                (y0, y1, offset, length - 3)]:
        lying = _with_chunk(data, b"lvMp", struct.pack(">IIII", *lie))
        assert _decode_own_layout(lying) is None
        assert np.array_equal(decode_level_map(lying), level_map)  # OpenCV ignores the private chunk
    pil = io.BytesIO()
    Image.fromarray(level_map).save(pil, format="PNG")  # another writer: no layout chunk
    assert _decode_own_layout(pil.getvalue()) is None and np.array_equal(decode_level_map(pil.getvalue()), level_map)
    broken = bytearray(data)
    broken[offset + 8 + 25 + 8 + 16 + 4 + 8 + 5] ^= 0xFF  # inside the box rows' deflate data
    with pytest.raises(ValueError):
        decode_level_map(bytes(broken))


def _tarfile_reference(samples) -> bytes:
    """What tarfile writes for the same members and metadata (what the writer used to call)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        for key, sample in samples:
            for ext in sorted(sample):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode, info.uname, info.gname = (len(sample[ext]), 0, 0o644,
                                                                            "smartbrush", "smartbrush")
                tar.addfile(info, io.BytesIO(sample[ext]))
    return buf.getvalue()


@pytest.mark.parametrize("key", ["000000397133-0000021", "k" * 95, "k" * 120])  # the last needs a pax header
def test_tar_writer_bytes_are_tarfiles(key):
    from smartbrush.schemas.shard_tar import write_tar_stream

    rng = np.random.default_rng(0)
    sizes = [0, 1, 511, 512, 513, 10_000, 30_001]
    samples = [(f"{key}{i}", {ext: rng.integers(0, 256, size, np.uint8).tobytes()
                              for ext, size in zip(["jpg", "json", "levels.png"], rng.choice(sizes, 3))})
               for i in range(5)]
    buf = io.BytesIO()
    assert write_tar_stream(buf, samples) == 5
    assert buf.getvalue() == _tarfile_reference(samples)
    assert len(buf.getvalue()) % tarfile.RECORDSIZE == 0
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tar:
        assert [m.name for m in tar.getmembers()][:3] == [f"{key}0.{e}" for e in ["jpg", "json", "levels.png"]]
        assert tar.extractfile(f"{key}4.json").read() == samples[4][1]["json"]


@pytest.mark.parametrize("width", [512, 97, 1])
def test_constant_row_segments_are_zlibs_one_shot_deflate(width):
    """The checkpointed segments give exactly the bytes of deflating the n rows in one call, for
    every n across several checkpoints, as the final block and as a sync-flushed one."""
    import zlib

    from smartbrush.schemas.level_map import _ConstantRows, _constant_rows

    def _deflate(raw, last):  # the definition: zlib level 1 over all n rows in one call
        z = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY)
        return z.compress(raw) + z.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)

    rows = _ConstantRows(width)
    for n in [*range(1, 2 * _ConstantRows.CHECKPOINT + 2), 200, 511, 512, 513, 100, 3]:  # not in order
        raw = np.full((n, width + 1), shard_sample.OUTSIDE, np.uint8)
        raw[:, 0] = 0
        for last in (True, False):
            assert rows.segment(n, last) == _deflate(raw.data, last), (n, last)
            assert _constant_rows(n, width, last) == (_deflate(raw.data, last), zlib.adler32(raw.data), raw.size)


def test_encoding_from_the_box_region_is_encode_level_map():
    from smartbrush.schemas.level_map import encode_level_map_box

    for level_map in _maps_of_every_layout():
        used = level_map != shard_sample.OUTSIDE
        if not used.any():
            continue
        x0, y0, x1, y1 = mask_box(used)
        data = encode_level_map_box(np.ascontiguousarray(level_map[y0:y1, x0:x1]), (x0, y0, x1, y1),
                                    *level_map.shape)
        assert data == encode_level_map(level_map)
    with pytest.raises(ValueError, match="does not fill box"):
        encode_level_map_box(np.zeros((3, 3), np.uint8), (0, 0, 4, 3), 8, 8)


def test_hashing_writer_blocks_give_the_same_bytes_and_digest(tmp_path):
    import hashlib
    import zlib

    from smartbrush.pipeline.storage import fileio

    rng = np.random.default_rng(1)
    pieces = [rng.integers(0, 256, int(n), np.uint8).tobytes() for n in rng.choice([0, 1, 512, 70_000], 60)]
    pieces.insert(30, bytes(3 * fileio.HashingWriter.BLOCK))  # larger than a block: written at once
    reused = bytearray(b"abc")
    final = str(tmp_path / "out.bin")

    def write(stream):
        for p in pieces:
            stream.write(p)
        stream.write(reused)
        reused[:] = b"xyz"  # the writer kept its own copy
        stream.write(memoryview(b"tail"))

    digest = fileio.atomic_write(final, write)
    expected = b"".join(pieces) + b"abc" + b"tail"
    assert open(final, "rb").read() == expected
    assert digest == fileio.Digest(len(expected), hashlib.sha256(expected).hexdigest(), f"{zlib.crc32(expected):08x}")


def test_box_rows_deflate_is_the_standard_zlib_rle_and_repeats_exactly():
    """The same map always gives the same bytes (a compressor whose output moved with the heap's
    contents broke byte-identical shards once), and they are the standard library zlib's Z_RLE."""
    import os
    import zlib

    from smartbrush.schemas.level_map import _deflate_box, _filtered_rows

    rng = np.random.default_rng(3)
    maps = [render_level_map(np.roll(np.roll(_exact(160), dy, 0), dx, 1), FINE)
            for dy, dx in rng.integers(-40, 40, (12, 2))] + _maps_of_every_layout()
    for level_map in maps:
        used = np.flatnonzero((level_map != shard_sample.OUTSIDE).any(axis=1))
        if not used.size:
            continue
        raw = _filtered_rows(level_map[used[0]:used[-1] + 1], 0, level_map.shape[1])
        for last in (False, True):
            z = zlib.compressobj(1, zlib.DEFLATED, -15, 9, zlib.Z_RLE)
            reference = z.compress(raw.data) + z.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)
            churn = []
            for _ in range(20):
                churn.append(bytearray(os.urandom(int(rng.integers(1, 300_000)))))  # other heap contents
                assert _deflate_box(bytes(raw.data), last) == reference
        assert encode_level_map(level_map) == encode_level_map(level_map.copy())
