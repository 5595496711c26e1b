"""`smartbrush eval compare`: one table across runs, and the refusal that names what differs."""

from __future__ import annotations

import csv
import json

from smartbrush.cli import main


def _run(folder, fid_sha="f" * 64, fid_size=256, methods=("smartbrush",), offset=0.0):
    folder.mkdir(parents=True)
    rows = []
    for method in methods:
        for lv in (0, 1):
            rows += [{"method": method, "level": lv, "precision": lv, "metric": "fid", "value": 10.0 + lv + offset,
                      "samples": 4, "feature_sha256": fid_sha},
                     {"method": method, "level": lv, "precision": lv, "metric": "bg_mse_mask_not_object",
                      "value": 0.5, "samples": 4, "feature_sha256": None}]
    result = {"schema": "smartbrush.eval_metrics", "schema_version": 2,
              "levels": [{"benchmark_level": 0, "precision": 0, "type": "exact"},
                         {"benchmark_level": 1, "precision": 1, "type": "box"}],
              "comparable": {"benchmark_manifest_sha256": "b" * 64, "samples_evaluated": 4, "resolution": 512,
                             "fid_size": fid_size, "local_size": 256, "fid_extractor_sha256": fid_sha,
                             "fid_feature_size": 2048, "fid_antialias": None, "clip_sha256": None, "prompt": "label",
                             "composite": "given"},
              "metrics": rows}
    (folder / "metrics.json").write_text(json.dumps(result))
    return str(folder / "metrics.json")


def test_compare_puts_runs_in_one_table(tmp_path, capsys):
    a = _run(tmp_path / "ours", methods=("smartbrush", "smartbrush-noswitch"))
    b = _run(tmp_path / "peer", methods=("sd-inpaint",), offset=5.0)
    assert main(["eval", "compare", a, b, "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "## accurate masks: benchmark level 0" in md and "## box masks: benchmark level 1" in md
    assert "| peer | sd-inpaint | 1 | 16 |" in md  # box level, FID 10 + 1 + 5
    # Without mask IoU and CLIP score beside it, the measure that rewards an empty mask is left out.
    assert "box-bg" not in md
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "compare.csv")))
    assert [(r["level"], r["run"], r["method"], r["fid"]) for r in rows] == [
        ("0", "ours", "smartbrush", "10.0"), ("0", "ours", "smartbrush-noswitch", "10.0"), ("0", "peer", "sd-inpaint", "15.0"),
        ("1", "ours", "smartbrush", "11.0"), ("1", "ours", "smartbrush-noswitch", "11.0"), ("1", "peer", "sd-inpaint", "16.0")]


def test_compare_refuses_other_extractors_and_resolutions(tmp_path, capsys):
    a = _run(tmp_path / "a")
    b = _run(tmp_path / "b", fid_sha="e" * 64, fid_size=299)
    assert main(["eval", "compare", a, b]) == 2
    err = capsys.readouterr().err
    assert "fid_extractor_sha256 differs" in err and "fid_size differs" in err and f"{b}: 299" in err
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "metrics.json").write_text(json.dumps({"schema": "smartbrush.eval_metrics", "schema_version": 1}))
    assert main(["eval", "compare", a, str(tmp_path / "old")]) == 2
    assert "comparability record" in capsys.readouterr().err
