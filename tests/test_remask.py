"""smartbrush remask: per-shard functions on hand-made samples, then the Beam job end to end."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from smartbrush import config as config_mod  # noqa: E402
from smartbrush.config import RenderConfig  # noqa: E402
from smartbrush.pipeline.render.ladder import render_ladder, render_level_map, unchanged_levels  # noqa: E402
from smartbrush.pipeline.storage.manifest import read_rejected, reconciles  # noqa: E402
from smartbrush.pipeline.imaging.masks import mask_box, mask_to_rle  # noqa: E402
from smartbrush.pipeline.render.remask import (SHARD_CORRUPT, SHARD_MISSING, input_schedule, new_json,  # noqa: E402
                                              remask_sample, remask_samples, remask_shard)
from smartbrush.schemas.level_map import decode_level_map, encode_level_map  # noqa: E402
from smartbrush.schemas.shard_sample import encode_json, sample_mask, sample_masks  # noqa: E402
from smartbrush.schemas.shard_tar import sample_keys  # noqa: E402
from tests.sample_fixtures import encode_masks_v1  # noqa: E402
from smartbrush.pipeline.render.samples import render_sample  # noqa: E402
from smartbrush.pipeline.storage.shards import read_shard, write_shard  # noqa: E402
from smartbrush.schemas import shard_sample  # noqa: E402
from smartbrush.schemas.mask_schedule import from_dict  # noqa: E402

BEAM = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]
TINY = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "coco_val2017_tiny")
SMARTBRUSH = config_mod.load_schedule("smartbrush")
FINE = config_mod.load_schedule("smartbrush-fine")
EXACT_BOX = config_mod.load_schedule("exact-box")
LEVELS = shard_sample.LEVELS_EXT


# ---- hand-made samples --------------------------------------------------------------------------

def _disk(size=64, cx=30, cy=34, r=12) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _meta(key: str, schedule, resolution=64, version=2) -> dict:
    meta = {"schema": shard_sample.NAME, "schema_version": version, "task": "inpainting",
            "instance_id": key, "source": "coco", "label": "cup", "captions": [{"text": "a cup", "model": "label"}],
            "resolution": resolution, "box_crop_xyxy": [18, 22, 43, 47], "mask_schedule": schedule.to_json()}
    if version == 1:
        meta["mask_keys"] = shard_sample.mask_exts(schedule.num_levels)
    else:
        meta.update(image_sha256="ab" * 32, crop_policy="object")
    return meta


def _sample(key="coco_val_1_2", exact=None, schedule=SMARTBRUSH, version=2) -> dict:
    """A raw sample of format `version` whose ladder is `schedule`'s rendering of `exact`."""
    exact = _disk() if exact is None else exact
    sample = {"__key__": key, "jpg": b"\xff\xd8 not decoded by remask", "txt": b"an extra member",
              "json": encode_json(_meta(key, schedule, exact.shape[0], version))}
    if version == 1:
        sample.update(encode_masks_v1(render_ladder(exact, schedule)))
    else:
        sample[LEVELS] = encode_level_map(render_level_map(exact, schedule))
    return sample


def test_remask_sample_changes_only_masks_and_the_schedule():
    sample = _sample()
    out = remask_sample(sample, EXACT_BOX)
    assert sorted(out) == ["jpg", "json", LEVELS, "txt"]
    assert out["jpg"] == sample["jpg"] and out["txt"] == sample["txt"]
    expected_map = np.full((64, 64), 255, np.uint8)
    expected_map[22:47, 18:43] = 1
    expected_map[_disk()] = 0
    np.testing.assert_array_equal(decode_level_map(out[LEVELS]), expected_map)
    assert out["json"] == encode_json({**_meta("coco_val_1_2", SMARTBRUSH), "mask_schedule": EXACT_BOX.to_json()})


def test_a_known_input_schedule_is_used_only_for_an_equal_value():
    """input_schedule and new_json remember schedules by their json's "hash" but check the whole
    value: a sample whose levels differ under the same hash gets its own schedule and its own bytes."""
    meta = _meta("k", SMARTBRUSH)
    assert input_schedule(meta).levels == SMARTBRUSH.levels
    edited = json.loads(encode_json(meta))
    edited["mask_schedule"]["levels"][1]["sigma"] = 0.05  # same hash, another schedule
    assert edited["mask_schedule"]["hash"] == meta["mask_schedule"]["hash"]
    assert input_schedule(edited).levels[1].sigma == 0.05
    assert input_schedule(meta).levels == SMARTBRUSH.levels  # the first one is still known, unchanged
    raw = encode_json(edited)
    assert new_json(raw, json.loads(raw), FINE) == encode_json({**edited, "mask_schedule": FINE.to_json()})
    # The known value written with other spacing: parsed, and only its bytes replaced.
    loose = encode_json({k: v for k, v in meta.items() if k != "mask_schedule"})[:-1] + (
        b',"mask_schedule":' + json.dumps(meta["mask_schedule"], separators=(", ", ": ")).encode() + b"}")
    assert new_json(loose, json.loads(loose), FINE) == loose[:loose.index(b'"mask_schedule":') + 16] + (
        encode_json(FINE.to_json()) + b"}")


def test_new_json_replaces_only_the_schedule_value():
    meta = {**_meta("k", SMARTBRUSH), "captions": [{"text": 'a "mask_schedule": cup, caf\u00e9', "model": "label"}]}
    raw = encode_json(meta)
    expected = encode_json({**meta, "mask_schedule": FINE.to_json()})
    assert new_json(raw, json.loads(raw), FINE) == expected  # our own json: the bytes of a re-encode
    # Compact json of another writer (other key order) keeps its bytes but the schedule value's.
    unsorted = json.dumps(meta, separators=(",", ":"), ensure_ascii=False).encode()
    out = new_json(unsorted, json.loads(unsorted), FINE)
    at = unsorted.index(b'"mask_schedule":') + len(b'"mask_schedule":')
    assert out.startswith(unsorted[:at]) and out.endswith(unsorted[at + len(encode_json(SMARTBRUSH.to_json())):])
    assert json.loads(out) == {**meta, "mask_schedule": FINE.to_json()}
    # Indented json, the key twice (the last one counts when parsed), a v1 json: re-encoded.
    spaced = json.dumps(meta, indent=1).encode()
    assert new_json(spaced, json.loads(spaced), FINE) == expected
    # The key twice (the last one counts when parsed) or a v1 json: re-encoded from the parsed json.
    twice = raw[:-1] + b',"mask_schedule":' + encode_json(EXACT_BOX.to_json()) + b"}"
    assert new_json(twice, json.loads(twice), FINE) == expected
    v1 = encode_json(_meta("k", SMARTBRUSH, version=1))
    assert json.loads(new_json(v1, json.loads(v1), FINE))["schema_version"] == shard_sample.VERSION


def test_remask_sample_grows_the_ladder_and_nests():
    out = remask_sample(_sample(schedule=EXACT_BOX), FINE)
    levels = sample_masks({"__key__": "k", **out})
    assert len(levels) == 7 and "mask_keys" not in json.loads(out["json"])
    for s, (lo, hi) in enumerate(zip(levels, levels[1:])):
        assert not (lo & ~hi).any(), f"level {s} not inside level {s + 1}"
    x0, y0, x1, y1 = mask_box(levels[0])
    assert levels[-1].sum() == (x1 - x0) * (y1 - y0) and levels[-1][y0:y1, x0:x1].all()
    for s, level in enumerate(render_ladder(_disk(), FINE)):
        np.testing.assert_array_equal(levels[s], level)


def test_remask_to_the_same_schedule_keeps_the_level_map_bytes():
    sample = _sample(schedule=FINE)
    out = remask_sample(sample, FINE)
    assert out == {k: v for k, v in sample.items() if k != "__key__"}


def test_remask_equals_rendering_with_the_new_schedule():
    """The remasked sample is byte-identical to the sample a build renders with the new schedule."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
    mask = np.zeros((90, 120), bool)
    mask[20:61, 30:71] = _disk(41, 20, 20, 18)
    x0, y0, x1, y1 = mask_box(mask)
    rle = mask_to_rle(mask)
    row = {"instance_id": "coco_val_7_8", "source": "coco", "split": "val", "image_id": "7", "annotation_id": "8",
           "image_path": "/x/7.jpg", "category_id": "47", "label": "cup", "captions": [],
           "area": int(mask.sum()), "box_xyxy": [x0, y0, x1, y1],
           "mask_rle_size": rle["size"], "mask_rle_counts": rle["counts"]}
    render = RenderConfig(resolution=64)
    old = {"__key__": row["instance_id"], **render_sample(image, row, SMARTBRUSH, render)}
    assert remask_sample(old, FINE) == render_sample(image, row, FINE, render)
    assert remask_sample({"__key__": "x", **remask_sample(old, FINE)}, SMARTBRUSH) == \
        {k: v for k, v in old.items() if k != "__key__"}


def test_v1_sample_becomes_v2():
    v1 = _sample(schedule=SMARTBRUSH, version=1)
    out = remask_sample(v1, SMARTBRUSH)  # same schedule: every level copied from the v1 PNGs
    assert sorted(out) == ["jpg", "json", LEVELS, "txt"] and out["jpg"] == v1["jpg"]
    for s, level in enumerate(sample_masks(v1)):
        np.testing.assert_array_equal(sample_mask({"__key__": "k", **out}, s), level)
    meta_in, meta_out = json.loads(v1["json"]), json.loads(out["json"])
    assert meta_out == {**{k: v for k, v in meta_in.items() if k != "mask_keys"}, "schema_version": 2,
                        "image_sha256": None, "crop_policy": None}
    assert set(meta_out) <= set(shard_sample.META_KEYS)
    # From v1 to another schedule: the v2 sample a v2 input with the same masks gives.
    assert remask_sample(v1, FINE)[LEVELS] == remask_sample(_sample(schedule=SMARTBRUSH), FINE)[LEVELS]


def _blur(sigma, threshold=0.05):
    return {"type": "blur", "sigma": sigma, "kernel": 0, "units": "relative", "threshold": threshold}


def _schedule(*blurs, id="t"):
    return from_dict({"id": id, "levels": [{"type": "exact"}, *blurs, {"type": "box"}]})


def test_unchanged_levels():
    a, b, c = _blur(0.03), _blur(0.07), _blur(0.15)
    assert unchanged_levels(_schedule(a, b, c), _schedule(a, b, _blur(0.2))) == {1: 1, 2: 2}
    assert unchanged_levels(_schedule(a, b), _schedule(b, a, c)) == {2: 2}  # {a, b} makes both
    assert unchanged_levels(_schedule(a, b), _schedule(a, _blur(0.07, 0.1))) == {1: 1}
    assert unchanged_levels(SMARTBRUSH, FINE) == {} and unchanged_levels(EXACT_BOX, FINE) == {}
    assert unchanged_levels(FINE, FINE) == {k: k for k in range(1, 6)}


def test_unchanged_levels_are_copied_not_recomputed(monkeypatch):
    """The input's level 1 is copied as it is (even one a render would not give) and only the new
    blur is computed."""
    from smartbrush.pipeline.render import ladder

    a, c = _blur(0.03), _blur(0.2)
    old, new = _schedule(a, _blur(0.07)), _schedule(a, c)
    exact = _disk()
    old_map = render_level_map(exact, old)
    odd = np.zeros_like(exact)
    odd[22:26, 39:43] = True  # a corner of the box, outside the exact mask
    assert not (odd & exact).any() and not (odd & (old_map <= 1)).all()
    old_map[odd] = 1
    sample = {**_sample(schedule=old), LEVELS: encode_level_map(old_map)}
    calls = []
    real = ladder.blur_parameters  # called once per level that is blurred, when a plan is made
    monkeypatch.setattr(ladder, "blur_parameters", lambda level, side: calls.append(level) or real(level, side))
    ladder._ladder_plan.cache_clear()  # plans are cached per schedule and box side: make this one afresh
    out = sample_masks({"__key__": "k", **remask_sample(sample, new)})
    assert calls == [new.levels[2]]  # one blur: the new level 2
    np.testing.assert_array_equal(out[1], old_map <= 1)
    np.testing.assert_array_equal(out[2], render_ladder(exact, _schedule(c))[1] | (old_map <= 1))


def test_bad_samples_are_rejected_with_a_reason():
    def with_map(key, level_map):
        return {**_sample(key), LEVELS: encode_level_map(level_map)}

    good = _sample("k_good")
    no_json = {k: v for k, v in _sample("k_nojson").items() if k != "json"}
    bad_png = {**_sample("k_badpng"), LEVELS: b"\x89PNG garbage"}
    rgb_png = {**_sample("k_rgb"), LEVELS: _rgb_png()}
    no_mask = {k: v for k, v in _sample("k_nomask").items() if k != LEVELS}
    wrong_version = {**_sample("k_version"),
                     "json": encode_json({**_meta("k_version", SMARTBRUSH), "schema_version": 99})}
    empty = with_map("k_empty", np.full((64, 64), 255, np.uint8))
    wrong_size = with_map("k_size", render_level_map(_disk(32, 10, 10, 5), SMARTBRUSH))
    bad_value = render_level_map(_disk(), SMARTBRUSH)
    bad_value[30, 30] = 7  # S = 4
    bad_values = with_map("k_values", bad_value)
    odd_keys = _sample("k_keys", version=1)
    odd_keys["json"] = encode_json({**_meta("k_keys", SMARTBRUSH, version=1), "mask_keys": ["jpg"]})
    bad_schedule = {**_sample("k_sched"),
                    "json": encode_json({**_meta("k_sched", SMARTBRUSH), "mask_schedule": {"levels": "x"}})}
    v1_missing_level = {k: v for k, v in _sample("k_v1", version=1).items() if k != "mask_s0.png"}
    samples = [good, no_json, bad_png, rgb_png, no_mask, wrong_version, empty, wrong_size, bad_values, odd_keys,
               bad_schedule, v1_missing_level]
    out, rejected = remask_samples(samples, FINE, "in.tar")
    assert [k for k, _ in out] == ["k_good"]
    assert {r["record_id"]: r["reason"] for r in rejected} == {
        "k_nojson": "sample_invalid", "k_badpng": "mask_unreadable", "k_rgb": "mask_unreadable",
        "k_nomask": "mask_missing", "k_version": "sample_invalid", "k_empty": "empty_mask",
        "k_size": "mask_size_mismatch", "k_values": "mask_unreadable", "k_keys": "sample_invalid",
        "k_sched": "sample_invalid", "k_v1": "mask_missing"}
    assert {r["stage"] for r in rejected} == {"remask"} and {r["input"] for r in rejected} == {"in.tar"}
    assert {r["source"] for r in rejected if r["record_id"] != "k_nojson"} == {"coco"}


def _rgb_png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _shard_entry(directory, name, samples) -> dict:
    members = [(s["__key__"], {k: v for k, v in s.items() if k != "__key__"}) for s in samples]
    info, _ = write_shard(str(directory), name, members)
    return info


def test_remask_shard_writes_resumes_and_rejects(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    bad = {**_sample("k2"), LEVELS: b"not a png"}
    entry = _shard_entry(src, "inpainting-000000.tar", [_sample("k1"), bad, _sample("k3")])
    first = remask_shard(str(src), str(out), entry, FINE)
    assert first.written_now and first.inputs == 3 and first.info["samples"] == 2
    assert [(r["record_id"], r["reason"]) for r in first.rejected] == [("k2", "mask_unreadable")]
    data = (out / "inpainting-000000.tar").read_bytes()
    assert first.info["sha256"] == hashlib.sha256(data).hexdigest() and first.info["bytes"] == len(data)
    assert [s["__key__"] for s in read_shard(str(out / "inpainting-000000.tar"))] == ["k1", "k3"]
    again = remask_shard(str(src), str(out), entry, FINE)  # resume: kept, rejections re-derived
    assert not again.written_now and again.info == first.info and again.rejected == first.rejected
    with pytest.raises(RuntimeError, match="another mask schedule"):
        remask_shard(str(src), str(out), entry, EXACT_BOX)


def test_damaged_or_missing_input_shard_rejects_all_its_samples(tmp_path):
    src = tmp_path / "in"
    entry = _shard_entry(src, "inpainting-000000.tar", [_sample(f"k{i}") for i in range(4)])
    path = src / "inpainting-000000.tar"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    keys = sample_keys(path.read_bytes(), tolerant=True)
    assert 1 <= len(keys) < 4 and keys == [f"k{i}" for i in range(len(keys))]
    result = remask_shard(str(src), str(tmp_path / "out"), entry, FINE)
    assert result.info is None and result.inputs == 4
    assert [r["record_id"] for r in result.rejected] == keys + [f"inpainting-000000.tar#{i:06d}"
                                                                for i in range(len(keys), 4)]
    assert {r["reason"] for r in result.rejected} == {SHARD_CORRUPT}
    assert not (tmp_path / "out" / "inpainting-000000.tar").exists()
    path.write_bytes(data[:-1] + b"x")  # same length, another checksum
    assert {r["reason"] for r in remask_shard(str(src), str(tmp_path / "out"), entry, FINE).rejected} == {SHARD_CORRUPT}
    path.unlink()
    missing = remask_shard(str(src), str(tmp_path / "out"), entry, FINE)
    assert [r["reason"] for r in missing.rejected] == [SHARD_MISSING] * 4


def test_input_shard_is_checked_by_crc32_or_by_sha256_for_a_v1_manifest(tmp_path):
    """A v2 manifest entry is checked by size and CRC-32 (not sha256, which would cost more than
    the masks); a v1 entry, which has no CRC-32, by its sha256. A flipped byte fails either way."""
    import zlib

    src = tmp_path / "in"
    entry = _shard_entry(src, "inpainting-000000.tar", [_sample(f"k{i}") for i in range(3)])
    path = src / "inpainting-000000.tar"
    data = path.read_bytes()
    assert entry["crc32"] == f"{zlib.crc32(data):08x}" and entry["sha256"] == hashlib.sha256(data).hexdigest()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01  # inside a sample's bytes
    for i, e in enumerate([entry, {k: v for k, v in entry.items() if k != "crc32"}]):
        path.write_bytes(bytes(flipped))
        bad = remask_shard(str(src), str(tmp_path / f"bad{i}"), e, FINE)
        assert bad.info is None and {r["reason"] for r in bad.rejected} == {SHARD_CORRUPT}
        assert ("CRC-32" if "crc32" in e else "sha256") in bad.rejected[0]["detail"]
        path.write_bytes(data)
        good = remask_shard(str(src), str(tmp_path / f"good{i}"), e, FINE)
        assert good.info["samples"] == 3 and not good.rejected
    # a wrong CRC-32 on intact bytes is caught by the check, not ignored for the sha256
    assert remask_shard(str(src), str(tmp_path / "wrong"), {**entry, "crc32": "00000000"}, FINE).info is None


# ---- the Beam job, end to end ------------------------------------------------------------------

def _polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x + w // 2, y + h + 10, x, y + h]]


def write_hand_made_coco(root) -> tuple[str, str]:
    """Three images, eight annotations: six objects, one crowd (filtered) and one too small."""
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    rng = np.random.default_rng(1)
    anns = {1: [_polygon(20, 20, 60, 40), _polygon(100, 50, 50, 60), [[5, 5, 10, 5, 10, 10]]],
            2: [_polygon(30, 30, 80, 50), [[150, 10, 190, 10, 190, 50, 150, 50], [160, 60, 180, 60, 170, 90]]],
            3: [_polygon(60, 40, 70, 70), _polygon(10, 90, 40, 30), _polygon(120, 20, 40, 40)]}
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "dog"}]}
    ann_id = 100
    for image_id, polys in anns.items():
        name = f"{image_id:012d}.jpg"
        Image.fromarray(rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)).save(images_dir / name, quality=90)
        coco["images"].append({"id": image_id, "file_name": name, "width": 200, "height": 150})
        for i, seg in enumerate(polys):
            ann_id += 1
            coco["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": 1 + i % 2,
                                        "segmentation": seg, "iscrowd": int(image_id == 3 and i == 2),
                                        "area": 0, "bbox": [0, 0, 0, 0]})
    path = root / "instances_val.json"
    path.write_text(json.dumps(coco))
    return str(path), str(images_dir)


def build(annotations, images, out, *extra):
    from smartbrush.pipeline.commands.build import run_build

    run_build(["--coco-annotations", annotations, "--coco-images", images, "--out", str(out), "--config", "small",
               *extra, *BEAM])


def remask(src, out, schedule):
    from smartbrush.pipeline.commands.remask import run

    return run(["--shards", str(src), "--schedule", schedule, "--out", str(out), *BEAM])


def tar_hashes(directory) -> dict[str, str]:
    return {n: hashlib.sha256((directory / n).read_bytes()).hexdigest()
            for n in sorted(os.listdir(directory)) if n.endswith(".tar")}


def all_samples(directory) -> dict[str, dict]:
    """Every sample of the readable shards of a folder, by key."""
    out = {}
    for name in tar_hashes(directory):
        try:
            out.update({s["__key__"]: s for s in read_shard(str(directory / name))})
        except Exception:  # a shard a test damaged on purpose
            pass
    return out


def manifest(directory) -> dict:
    return json.loads((directory / "manifest.json").read_bytes())


def check_shard_set(directory):
    """The lead's `verify` when it exists; else every shard against its manifest entry."""
    try:
        from smartbrush.pipeline.commands.verify import verify_shard_set
    except ImportError:
        verify_shard_set = None
    if verify_shard_set is not None:
        assert verify_shard_set(str(directory)) == []
    m = manifest(directory)
    assert reconciles(m["counts"])
    assert m["rejected_file"]["rows"] == sum(m["counts"]["rejected"].values()) + sum(m["counts"]["filtered"].values())
    assert len(read_rejected(str(directory))) == m["rejected_file"]["rows"]
    hashes = tar_hashes(directory)
    assert sorted(hashes) == [s["name"] for s in m["shards"]]
    for s in m["shards"]:
        assert hashes[s["name"]] == s["sha256"] and (directory / s["name"]).stat().st_size == s["bytes"]
        assert len(read_shard(str(directory / s["name"]))) == s["samples"]
    assert m["counts"]["written"] == sum(s["samples"] for s in m["shards"])


def check_remasked(src, out, schedule):
    """Nesting on every sample; every member but the masks and json byte-identical to the input;
    the same exact mask; v2 output (one level map); the json differs in mask_schedule only (and,
    from a v1 input, in its version keys); the manifest records the lineage."""
    before, after = all_samples(src), all_samples(out)
    rejected = {r["record_id"] for r in read_rejected(str(out)) if r["stage"] == "remask"}
    assert sorted(after) == sorted(set(before) - rejected)
    for key, sample in after.items():
        masks = sample_masks(sample)
        assert len(masks) == schedule.num_levels
        for lo, hi in zip(masks, masks[1:]):
            assert not (lo & ~hi).any(), key
        x0, y0, x1, y1 = mask_box(masks[0])
        assert masks[-1].sum() == (x1 - x0) * (y1 - y0) and masks[-1][y0:y1, x0:x1].all()
        old = before[key]
        assert sample["jpg"] == old["jpg"]
        np.testing.assert_array_equal(masks[0], sample_mask(old, 0))
        new_meta, old_meta = json.loads(sample["json"]), json.loads(old["json"])
        assert new_meta["mask_schedule"] == schedule.to_json()
        assert new_meta["schema_version"] == shard_sample.VERSION and "mask_keys" not in new_meta
        if old_meta["schema_version"] == 1:
            old_meta = {**{k: v for k, v in old_meta.items() if k != "mask_keys"}, "schema_version": 2,
                        "image_sha256": None, "crop_policy": None}
        assert {k: v for k, v in new_meta.items() if k != "mask_schedule"} == \
               {k: v for k, v in old_meta.items() if k != "mask_schedule"}
        members = {k for k in sample if not k.startswith("__")}
        assert members == {"jpg", "json", LEVELS}
    m_in, m_out = manifest(src), manifest(out)
    check_shard_set(out)
    assert m_out["kind"] == "inpainting" and m_out["mask_schedule"] == schedule.to_json()
    assert m_out["lineage"]["input_manifest_sha256"] == hashlib.sha256((src / "manifest.json").read_bytes()).hexdigest()
    assert m_out["lineage"]["input_mask_schedule"] == m_in["mask_schedule"]
    assert m_out["lineage"]["input_dir"] == str(src)
    stage = m_out["lineage"]["remask_counts"]
    assert stage["inputs"] == m_in["counts"]["written"] and reconciles(stage)
    assert m_out["counts"]["inputs"] == m_in["counts"]["inputs"]
    assert m_out["config"] == {**m_in["config"], "schedule": schedule.id}
    assert config_mod.load_build_config(str(out / "config.yaml")).schedule == schedule.id


@pytest.fixture(scope="module")
def hand_made(tmp_path_factory):
    root = tmp_path_factory.mktemp("remask")
    annotations, images = write_hand_made_coco(root / "coco")
    build(annotations, images, root / "base", "--samples-per-shard", "2")
    return root, annotations, images


@pytest.mark.slow
def test_remask_and_back_is_byte_identical(hand_made):
    root, annotations, images = hand_made
    base = root / "base"
    m = manifest(base)
    assert m["counts"]["written"] == 6 and m["counts"]["filtered"] == {"crowd": 1, "min_area": 1}
    assert len(m["shards"]) == 3
    remask(base, root / "fine", "smartbrush-fine")
    check_remasked(base, root / "fine", FINE)
    assert manifest(root / "fine")["counts"] == m["counts"]  # no new rejections: counts carried as they were
    remask(root / "fine", root / "back", "smartbrush")
    check_remasked(root / "fine", root / "back", SMARTBRUSH)
    assert tar_hashes(root / "back") == tar_hashes(base)
    assert manifest(root / "back")["shards"] == m["shards"]
    assert (root / "back" / "config.yaml").read_bytes() == (base / "config.yaml").read_bytes()
    assert (root / "back" / "rejected.parquet").read_bytes() == (base / "rejected.parquet").read_bytes()
    assert manifest(root / "back")["lineage"]["input_lineage"]["input_manifest_sha256"] == \
        hashlib.sha256((base / "manifest.json").read_bytes()).hexdigest()
    # The remasked set is exactly what a build with the new schedule writes.
    build(annotations, images, root / "fine-built", "--samples-per-shard", "2", "--schedule", "smartbrush-fine")
    assert tar_hashes(root / "fine-built") == tar_hashes(root / "fine")


@pytest.mark.slow
def test_resumed_run_ends_with_the_same_shards(hand_made):
    root, _, _ = hand_made
    if not (root / "fine").exists():
        remask(root / "base", root / "fine", "smartbrush-fine")
    resumed = root / "fine-resumed"
    shutil.copytree(root / "fine", resumed)
    (resumed / "inpainting-000001.tar").unlink()
    (resumed / "manifest.json").unlink()  # an interrupted run has not written it yet
    (resumed / ".tmp-0123456789ab-inpainting-000001.tar").write_bytes(b"partial")
    remask(root / "base", resumed, "smartbrush-fine")
    assert tar_hashes(resumed) == tar_hashes(root / "fine")
    assert (resumed / "manifest.json").read_bytes() != b""
    assert manifest(resumed)["shards"] == manifest(root / "fine")["shards"]
    assert manifest(resumed)["counts"] == manifest(root / "fine")["counts"]
    assert not [n for n in os.listdir(resumed) if n.startswith(".tmp-")]


@pytest.mark.slow
def test_portable_runner_gives_the_same_shards(hand_made):
    from smartbrush.pipeline.commands.remask import run

    root, _, _ = hand_made
    if not (root / "fine").exists():
        remask(root / "base", root / "fine", "smartbrush-fine")
    out = root / "fine-portable"
    run(["--shards", str(root / "base"), "--schedule", "smartbrush-fine", "--out", str(out),
         "--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"])
    assert tar_hashes(out) == tar_hashes(root / "fine")
    for name in ("rejected.parquet", "manifest.json", "config.yaml"):
        assert (out / name).read_bytes() == (root / "fine" / name).read_bytes(), name


@pytest.mark.slow
def test_a_corrupt_shard_is_rejected_and_the_rest_written(hand_made):
    root, _, _ = hand_made
    src = root / "damaged"
    shutil.copytree(root / "base", src)
    lost = [s["__key__"] for s in read_shard(str(src / "inpainting-000001.tar"))]
    data = (src / "inpainting-000001.tar").read_bytes()
    (src / "inpainting-000001.tar").write_bytes(data[:len(data) // 3])
    out = root / "from-damaged"
    remask(src, out, "exact-box")
    m = manifest(out)
    assert [s["name"] for s in m["shards"]] == ["inpainting-000000.tar", "inpainting-000002.tar"]
    assert m["counts"]["written"] == 4 and m["counts"]["rejected"] == {"shard_corrupt": 2}
    assert m["counts"]["filtered"] == manifest(src)["counts"]["filtered"]
    rows = [r for r in read_rejected(str(out)) if r["stage"] == "remask"]
    assert len(rows) == 2 and {r["reason"] for r in rows} == {"shard_corrupt"}
    assert {r["input"] for r in rows} == {str(src / "inpainting-000001.tar")}
    readable = set(sample_keys((src / "inpainting-000001.tar").read_bytes(), tolerant=True))
    assert {r["record_id"] for r in rows} == readable | {f"inpainting-000001.tar#{i:06d}"
                                                          for i in range(len(readable), 2)}
    assert readable <= set(lost)
    check_remasked(src, out, EXACT_BOX)


def test_missing_manifest_or_unknown_version_fails_before_the_pipeline(tmp_path):
    from smartbrush.pipeline.commands.remask import run

    src = tmp_path / "set"
    src.mkdir()
    with pytest.raises(SystemExit, match="no manifest.json: not a finished shard set"):
        run(["--shards", str(src), "--schedule", "exact-box", "--out", str(tmp_path / "o1"), *BEAM])
    (src / "manifest.json").write_text(json.dumps({"schema": "smartbrush.manifest", "schema_version": 99,
                                                   "kind": "inpainting"}))
    with pytest.raises(SystemExit, match="manifest version 99, this smartbrush reads 1, 2"):
        run(["--shards", str(src), "--schedule", "exact-box", "--out", str(tmp_path / "o2"), *BEAM])
    (src / "manifest.json").write_text(json.dumps({"schema": "smartbrush.manifest", "schema_version": 1,
                                                   "kind": "text_to_image"}))
    with pytest.raises(SystemExit, match="remask reads 'inpainting' sets"):
        run(["--shards", str(src), "--schedule", "exact-box", "--out", str(tmp_path / "o3"), *BEAM])
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_unknown_schedule_and_same_folder_fail_clearly(hand_made):
    from smartbrush.pipeline.commands.remask import run

    root, _, _ = hand_made
    with pytest.raises(SystemExit, match="unknown schedules preset 'nope'"):
        run(["--shards", str(root / "base"), "--schedule", "nope", "--out", str(root / "o4")])
    with pytest.raises(SystemExit, match="--out must differ from --shards"):
        run(["--shards", str(root / "base"), "--schedule", "exact-box", "--out", str(root / "base") + "/"])


def test_cli_help(capsys):
    from smartbrush.cli import main

    with pytest.raises(SystemExit) as e:
        main(["remask", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--shards" in text and "--schedule" in text and "exact-box" in text and "--direct_num_workers" in text


@pytest.mark.slow
def test_real_coco_round_trip(tmp_path):
    if not os.path.isdir(os.path.join(TINY, "val2017")):
        pytest.skip(f"{TINY} absent")
    base = tmp_path / "base"
    build(os.path.join(TINY, "annotations", "instances_val2017.json"), os.path.join(TINY, "val2017"), base)
    remask(base, tmp_path / "exact-box", "exact-box")
    check_remasked(base, tmp_path / "exact-box", EXACT_BOX)
    remask(tmp_path / "exact-box", tmp_path / "back", "smartbrush")
    check_remasked(tmp_path / "exact-box", tmp_path / "back", SMARTBRUSH)
    assert tar_hashes(tmp_path / "back") == tar_hashes(base)
    assert manifest(tmp_path / "back")["counts"] == manifest(base)["counts"]


def test_level_map_checks_do_not_trust_the_json_box():
    good = _sample("k")
    expected = remask_sample(good, FINE)
    wrong_box = {**good, "json": encode_json({**_meta("k", SMARTBRUSH), "box_crop_xyxy": [0, 0, 5, 5]})}
    out = remask_sample(wrong_box, FINE)  # the map is checked as a whole and its own box used
    assert out[LEVELS] == expected[LEVELS]
    stray = render_level_map(_disk(), SMARTBRUSH)
    stray[2, 2] = 4  # a box-level pixel outside the box of level 0
    _, rejected = remask_samples([{**good, LEVELS: encode_level_map(stray)}], FINE, "in.tar")
    assert [(r["reason"], "box level" in r["detail"]) for r in rejected] == [("mask_unreadable", True)]


def test_fast_tar_parse_equals_webdataset(tmp_path):
    import io
    import tarfile

    import webdataset as wds

    from smartbrush.schemas.shard_tar import _parse_plain_tar
    from smartbrush.schemas.shard_tar import read_samples as parse_tar

    def via_webdataset(data):
        stream = wds.tariterators.tar_file_expander([{"stream": io.BytesIO(data), "url": "u"}])
        return list(wds.tariterators.group_by_keys(stream))

    entry = _shard_entry(tmp_path, "inpainting-000000.tar", [_sample("k1"), _sample("k2", version=1)])
    data = (tmp_path / entry["name"]).read_bytes()
    assert _parse_plain_tar(data, "u") is not None and parse_tar(data, "u") == via_webdataset(data)

    def tar_of(*members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, body in members:
                info = tarfile.TarInfo(name)
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
        return buf.getvalue()

    others = [tar_of(("a.json", b"{}"), ("a.TXT", b"x")),  # upper-case extension: webdataset lower-cases
              tar_of(("d/a.json", b"{}"), ("d/a.txt", b"x")),  # a directory in the name
              tar_of(("a.json", b"{}"), ("a.json", b"{}")),  # duplicate member: webdataset raises
              data + b"garbage"]
    for other in others:
        assert _parse_plain_tar(other, "u") is None
        try:
            expected = via_webdataset(other)
        except Exception as e:
            with pytest.raises(type(e)):
                parse_tar(other, "u")
        else:
            assert parse_tar(other, "u") == expected
    assert _parse_plain_tar(data[:len(data) // 2], "u") is None


def to_v1_set(src, dst):
    """A copy of a v2 shard set in the v1 sample format (one PNG per level, mask_keys), with its
    manifest's shard entries updated: what an older smartbrush wrote."""
    dst.mkdir()
    for name in ("rejected.parquet", "config.yaml"):
        shutil.copy(src / name, dst / name)
    m = manifest(src)
    entries = []
    for entry in m["shards"]:
        members = []
        for s in read_shard(str(src / entry["name"])):
            meta = json.loads(s["json"])
            meta = {**{k: v for k, v in meta.items() if k not in ("image_sha256", "crop_policy")},
                    "schema_version": 1, "mask_keys": shard_sample.mask_exts(len(meta["mask_schedule"]["levels"]))}
            masks = encode_masks_v1(sample_masks(s))
            members.append((s["__key__"], {"jpg": s["jpg"], "json": encode_json(meta), **masks}))
        entries.append(write_shard(str(dst), entry["name"], members)[0])
    (dst / "manifest.json").write_text(json.dumps({**m, "shards": entries}))


@pytest.mark.slow
def test_v1_set_is_remasked_to_v2(hand_made):
    root, _, _ = hand_made
    v1 = root / "base-v1"
    if not v1.exists():
        to_v1_set(root / "base", v1)
    assert json.loads(next(iter(all_samples(v1).values()))["json"])["schema_version"] == 1
    remask(v1, root / "v1-same", "smartbrush")  # the same schedule: every level copied
    check_remasked(v1, root / "v1-same", SMARTBRUSH)
    base, same = all_samples(root / "base"), all_samples(root / "v1-same")
    assert sorted(base) == sorted(same)
    for key, sample in same.items():
        assert sample[LEVELS] == base[key][LEVELS] and sample["jpg"] == base[key]["jpg"]
    remask(v1, root / "v1-fine", "smartbrush-fine")
    check_remasked(v1, root / "v1-fine", FINE)
    fine = all_samples(root / "fine") if (root / "fine").exists() else None
    if fine is not None:  # the v2 remask of the same set gives the same masks
        from_v1 = all_samples(root / "v1-fine")
        assert {k: s[LEVELS] for k, s in from_v1.items()} == {k: s[LEVELS] for k, s in fine.items()}
