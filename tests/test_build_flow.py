"""The build's data flow: shard plans from keys, the output folder's identity, reconciliation at
finalize, resume after an image is fixed, and BLIP captions rendered where the shard is written."""

import json
import os
import shutil

import pytest
from apache_beam.metrics.metric import MetricsFilter

from smartbrush.pipeline.commands.build import run_build, run_shard
from smartbrush.pipeline.commands.caption import run as run_caption
from smartbrush.pipeline.commands.demo import sample_data_dir
from smartbrush.pipeline.storage.identity import IdentityMismatch, claim_output, differences, make_identity
from smartbrush.pipeline.storage.manifest import ReconciliationError, finalize_set, read_manifest, read_rejected
from smartbrush.pipeline.storage.shard_plan import image_key, plan_boundaries, plan_digest, shard_of
from tests.conftest import MULTI

# --- shard plans -----------------------------------------------------------------------------------


def test_plan_packs_whole_images_in_key_order():
    counts = [("c_5", 4), ("a_1", 3), ("b_2", 2), ("b_9", 1), ("d_0", 7), ("e_0", 1)]
    assert plan_boundaries(counts, 5) == ["a_1", "b_9", "d_0", "e_0"]
    # a - 3, b_2 - 2 (=5); b_9 1 + c_5 4 (=5); d_0 7 alone (over the limit, never split); e_0
    assert [shard_of(k, ["a_1", "b_9", "d_0", "e_0"]) for k, _ in sorted(counts)] == [0, 0, 1, 1, 2, 3]
    assert plan_boundaries(list(reversed(counts)), 5) == plan_boundaries(counts, 5)
    assert plan_boundaries(counts, 1000) == ["a_1"] and plan_boundaries([], 10) == []
    with pytest.raises(KeyError):
        shard_of("0", ["a_1"])


def test_image_key_and_plan_digest():
    rows = [{"instance_id": "coco_val_12_7"}, {"instance_id": "coco_val_12_3"}]
    assert image_key(rows) == "coco_val_12_3"
    assert plan_digest(["b", "a"]) == plan_digest(["a", "b"]) != plan_digest(["a"])


# --- identity and finalize ---------------------------------------------------------------------------


def test_identity_refuses_what_changes_the_bytes(tmp_path):
    base = dict(kind="inpainting", config={"render": {"resolution": 512}}, schedule={"hash": "s1"},
                captioner={"model": "m1", "revision": "r1", "settings": {}, "runtime": {"device": "cpu"}},
                inputs=[{"path": "/a.json", "sha256": "h1"}])
    ident = make_identity(**base)
    claim_output(str(tmp_path), ident)
    claim_output(str(tmp_path), make_identity(**{**base, "inputs": [{"path": "/moved/a.json", "sha256": "h1"}]}))
    claim_output(str(tmp_path), make_identity(**{**base, "captioner": {**base["captioner"], "runtime": {"device": "cuda"}}}))
    cases = {"mask_schedule_hash": {"schedule": {"hash": "s2"}},
             "captioner.model": {"captioner": {**base["captioner"], "model": "m2"}},
             "captioner.revision": {"captioner": {**base["captioner"], "revision": "r2"}},
             "inputs": {"inputs": [{"path": "/a.json", "sha256": "h2"}]},
             "config.render.resolution": {"config": {"render": {"resolution": 256}}}}
    for field, change in cases.items():
        with pytest.raises(IdentityMismatch, match=field.replace(".", r"\.")):
            claim_output(str(tmp_path), make_identity(**{**base, **change}))
    assert differences({"a": {"b": 1}}, {"a": {"b": 2}}) == ["a.b: folder has 1, this run has 2"]


def test_finalize_refuses_counts_that_do_not_reconcile(tmp_path):
    row = {"record_id": "x", "source": "coco", "stage": "shard", "kind": "rejected", "reason": "image_missing",
           "detail": "", "input": ""}
    shards = [{"name": "s-000000.tar", "samples": 3, "bytes": 1, "sha256": "0"}]
    with pytest.raises(ReconciliationError, match=r"inputs 5 != written 3 \+ rejected 1"):
        finalize_set(str(tmp_path), "inpainting", {}, None, [], 5, shards, [row])
    assert not (tmp_path / "manifest.json").exists()
    m = finalize_set(str(tmp_path), "inpainting", {}, None, [], 4, shards, [row])
    assert m["counts"] == {"inputs": 4, "written": 3, "rejected": {"image_missing": 1}, "filtered": {}}


def test_a_derived_stage_checks_its_own_counts_and_carries_the_upstream_ones(tmp_path):
    """A stage reading an earlier shard set (remask): its own counts must reconcile (inputs = the
    samples it read) and go to the lineage; the manifest's counts reconcile back to the upstream
    set's inputs, with the upstream rejections copied."""
    from smartbrush.pipeline.transforms.finalize import FinalizeShardSet

    up, out = tmp_path / "up", tmp_path / "out"
    up.mkdir(), out.mkdir()
    upstream_row = {"record_id": "u", "source": "coco", "stage": "ingest", "kind": "filtered", "reason": "crowd",
                    "detail": "", "input": ""}
    finalize_set(str(up), "inpainting", {}, None, [], 5, [{"name": "s-000000.tar", "samples": 4, "bytes": 1,
                                                             "sha256": "0"}], [upstream_row])
    row = {**upstream_row, "record_id": "k", "stage": "remask", "kind": "rejected", "reason": "mask_unreadable"}
    shards = [{"name": "s-000000.tar", "samples": 3, "bytes": 1, "sha256": "0"}]
    fn = FinalizeShardSet(str(out), "inpainting", {}, None, [], upstream_dir=str(up), lineage={"x": 1},
                          stage_counts="remask_counts")
    with pytest.raises(ReconciliationError, match="this stage's counts do not reconcile"):
        list(fn.process(None, shards, [row], [("s-000000.tar", 5)]))  # 5 read, 3 written + 1 rejected
    assert not (out / "manifest.json").exists()
    (m,) = fn.process(None, shards, [row], [("s-000000.tar", 4)])
    assert m["lineage"] == {"x": 1, "remask_counts": {"inputs": 4, "written": 3,
                                                      "rejected": {"mask_unreadable": 1}, "filtered": {}}}
    assert m["counts"] == {"inputs": 5, "written": 3, "rejected": {"mask_unreadable": 1}, "filtered": {"crowd": 1}}
    assert sorted(r["record_id"] for r in read_rejected(str(out))) == ["k", "u"]


# --- end to end on the embedded COCO sample ------------------------------------------------------------


def _coco_copy(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(os.path.join(sample_data_dir(), "coco"), images)
    return ["--coco-annotations", os.path.join(sample_data_dir(), "instances_sample.json"),
            "--coco-images", str(images), "--coco-split", "val2017",
            "--resolution", "128", "--samples-per-shard", "5"], images


def _files(out):
    skip = {"identity.json"}
    return {os.path.relpath(os.path.join(d, n), out): open(os.path.join(d, n), "rb").read()
            for d, _, names in os.walk(out) for n in names if n not in skip}


def _counter(result, name):
    return sum(c.committed for c in result.metrics().query(MetricsFilter().with_name(name))["counters"])


@pytest.mark.slow
def test_resume_after_a_fixed_image_equals_a_clean_run(tmp_path):
    flags, images = _coco_copy(tmp_path)
    broken = images / "000000269314.jpg"
    good = broken.read_bytes()
    broken.write_bytes(good[:2000])  # truncated: a content error, recorded as a rejection
    out = tmp_path / "resumed"
    run_build(flags + ["--out", str(out)] + MULTI)
    first = read_manifest(str(out))
    reasons = {r["reason"] for r in read_rejected(str(out))}
    assert "image_unreadable" in reasons and first["counts"]["rejected"]["image_unreadable"] >= 1
    parts_before = {n: (out / "shard_parts" / n).read_bytes() for n in os.listdir(out / "shard_parts")}

    broken.write_bytes(good)  # the user fixes the image and re-runs into the same folder
    result = run_build(flags + ["--out", str(out)] + MULTI)
    clean = tmp_path / "clean"
    run_build(flags + ["--out", str(clean)] + MULTI)
    counts = read_manifest(str(out))["counts"]
    assert counts["inputs"] == 21 and counts["rejected"] == {}
    assert counts["written"] + sum(counts["filtered"].values()) == 21
    assert _files(str(out)) == _files(str(clean))
    # only the shard that held the broken image was rendered again
    assert _counter(result, "shards_written") == 1
    changed = [n for n, b in parts_before.items() if (out / "shard_parts" / n).read_bytes() != b]
    assert len(changed) == 1 and changed[0].endswith(".tar.json")


@pytest.mark.slow
def test_a_folder_refuses_another_schedule_or_inputs(tmp_path):
    flags, _ = _coco_copy(tmp_path)
    out = str(tmp_path / "out")
    schedule = tmp_path / "mine.yaml"
    schedule.write_text("id: mine\nlevels:\n  - {type: exact}\n  - {type: box}\n")
    run_build(flags + ["--out", out, "--schedule", str(schedule)])
    schedule.write_text("id: mine\nlevels:\n  - {type: exact}\n  - {type: blur, sigma: 0.1, kernel: 0, units: relative, threshold: 0.05}\n"
                        "  - {type: box}\n")
    with pytest.raises(IdentityMismatch, match="mask_schedule_hash"):
        run_build(flags + ["--out", out, "--schedule", str(schedule)])
    annotations = json.load(open(os.path.join(sample_data_dir(), "instances_sample.json")))
    annotations["annotations"] = annotations["annotations"][:-1]
    changed = tmp_path / "instances_val2017.json"
    changed.write_text(json.dumps(annotations))
    flags[1] = str(changed)
    with pytest.raises(IdentityMismatch, match="inputs"):
        run_build(flags + ["--out", out, "--schedule", str(schedule)])


@pytest.mark.slow
def test_build_with_blip_decodes_once_and_equals_build_caption_shard(tmp_path):
    from tests.tiny_blip import write_random_blip

    model = write_random_blip(str(tmp_path / "blip"), seed=0)
    flags, _ = _coco_copy(tmp_path)
    blip = ["--captioner", "blip", "--model", model, "--max-batch-size", "8", "--min-batch-size", "1"]
    one = tmp_path / "one"
    result = run_build(flags + ["--out", str(one)] + blip + MULTI)
    assert _counter(result, "images_decoded") == 4  # 4 images, 21 instances: each decoded once
    assert _counter(result, "captions_added") + _counter(result, "captions_degenerate") == 21  # every instance
    labelled = tmp_path / "labelled"
    run_build(flags + ["--out", str(labelled)] + MULTI)
    run_caption(["--table", str(labelled / "instances"), "--out", str(tmp_path / "table2"), *blip, *MULTI])
    three = tmp_path / "three"
    run_shard(["--table", str(tmp_path / "table2"), "--out", str(three), *flags[6:]] + MULTI)
    tars = sorted(n for n in os.listdir(one) if n.endswith(".tar"))
    assert tars and tars == sorted(n for n in os.listdir(three) if n.endswith(".tar"))
    for name in tars:
        assert (one / name).read_bytes() == (three / name).read_bytes(), name
    # the model's caption is in the instance table the build wrote, beside the label
    import pyarrow.parquet as pq

    rows = pq.read_table(str(one / "instances")).to_pylist()
    assert len(rows) == 21 and all([c["model"] for c in r["captions"]][0] == "label" for r in rows)
    assert sum(len(r["captions"]) == 2 for r in rows) == _counter(result, "captions_added")


@pytest.mark.slow
def test_chunked_build_reconciles_and_resumes_chunk_by_chunk(tmp_path):
    flags, _ = _coco_copy(tmp_path)
    out = tmp_path / "chunked"
    run_build(flags + ["--out", str(out), "--chunks", "3"] + MULTI)
    m = read_manifest(str(out))
    names = [s["name"] for s in m["shards"]]
    assert m["counts"]["inputs"] == 21 and all(n.startswith("inpainting-c000") for n in names)
    assert {n.split("-")[1] for n in names} <= {"c0000", "c0001", "c0002"}
    import webdataset as wds

    keys = [s["__key__"] for s in wds.WebDataset([str(out / n) for n in names], shardshuffle=False)]
    assert len(keys) == len(set(keys)) == m["counts"]["written"]
    whole = tmp_path / "whole"
    run_build(flags + ["--out", str(whole)] + MULTI)
    assert read_manifest(str(whole))["counts"] == m["counts"]
    # a re-run finds every chunk finished and rewrites the same manifest without running a pipeline
    before = (out / "manifest.json").read_bytes()
    assert run_build(flags + ["--out", str(out), "--chunks", "3"] + MULTI) is None
    assert (out / "manifest.json").read_bytes() == before


@pytest.mark.slow
def test_portable_runner_loopback_writes_the_same_bytes(tmp_path):
    flags, _ = _coco_copy(tmp_path)
    run_build(flags + ["--out", str(tmp_path / "multi")] + MULTI)
    run_build(flags + ["--out", str(tmp_path / "portable"), "--runner", "PortableRunner", "--job_endpoint", "embed",
                       "--environment_type", "LOOPBACK"])
    multi, portable = _files(str(tmp_path / "multi")), _files(str(tmp_path / "portable"))
    assert sorted(multi) == sorted(portable)
    assert [n for n in multi if multi[n] != portable[n]] == []
