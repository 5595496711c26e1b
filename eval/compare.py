"""`smartbrush eval compare`: one table across evaluation runs (metrics.json files), methods x metrics per
benchmark level, refusing numbers that cannot stand side by side.

Two runs share a table only when their `comparable` blocks agree: the same benchmark (manifest sha256 and
samples evaluated), resolutions (benchmark, FID and local crop), FID and CLIP extractor files (sha256),
FID feature size and resize, prompt source and post-processing. The refusal names every difference.
"""

from __future__ import annotations

import csv
import io
import json
import os

from smartbrush.eval.report import LABELS, METRIC_ORDER, level_title, shown_metrics

SCHEMA = "smartbrush.eval_metrics"


class CompareError(ValueError):
    pass


def load_run(path: str) -> dict:
    """A metrics.json (or the folder holding one) written by `smartbrush eval`."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.json")
    try:
        with open(path) as f:
            result = json.load(f)
    except FileNotFoundError:
        raise CompareError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise CompareError(f"{path}: not JSON ({e})") from None
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        raise CompareError(f"{path}: not a {SCHEMA} file")
    if "comparable" not in result:
        raise CompareError(f"{path}: written without the comparability record (schema_version "
                           f"{result.get('schema_version')}); evaluate again with this smartbrush")
    result["_path"] = path
    return result


def differences(runs: list[dict]) -> list[str]:
    """One line per comparability key on which the runs disagree, naming each run's value."""
    out = []
    keys = list(dict.fromkeys(k for r in runs for k in r["comparable"]))
    for key in keys:
        values = [r["comparable"].get(key) for r in runs]
        if any(v != values[0] for v in values[1:]):
            listed = "; ".join(f"{r['_path']}: {v!r}" for r, v in zip(runs, values))
            out.append(f"{key} differs ({listed})")
    return out


def run_names(runs: list[dict]) -> list[str]:
    """Short names of the runs: their folder names, made unique with their position."""
    names = [os.path.basename(os.path.dirname(os.path.abspath(r["_path"]))) or r["_path"] for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n}#{i + 1}" for i, n in enumerate(names)]
    return names


def comparison(paths: list[str]) -> dict:
    """{"levels": [{benchmark_level, type, rows: [{run, method, precision, metrics: {name: value}}]}],
    "metrics": [names], "comparable": {...}}; CompareError when the runs may not share a table."""
    if len(paths) < 1:
        raise CompareError("name at least one metrics.json")
    runs = [load_run(p) for p in paths]
    diff = differences(runs)
    if diff:
        raise CompareError("these runs cannot share a table:\n  " + "\n  ".join(diff))
    names = run_names(runs)
    levels: dict[int, dict] = {}
    present: set[str] = set()
    for name, run in zip(names, runs):
        for lv in run["levels"]:
            entry = levels.setdefault(lv["benchmark_level"], {"benchmark_level": lv["benchmark_level"],
                                                              "type": lv.get("type", "?"), "rows": []})
            by_method: dict[str, dict] = {}
            for r in run["metrics"]:
                if r["level"] == lv["benchmark_level"]:
                    by_method.setdefault(r["method"], {})[r["metric"]] = r["value"]
                    present.add(r["metric"])
            for method, values in by_method.items():
                entry["rows"].append({"run": name, "method": method, "precision": lv["precision"],
                                      "metrics": values})
    return {"levels": [levels[k] for k in sorted(levels)], "metrics": shown_metrics(present),
            "comparable": runs[0]["comparable"], "runs": dict(zip(names, [r["_path"] for r in runs]))}


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def markdown(comp: dict) -> str:
    c = comp["comparable"]
    lines = ["# Comparison", "",
             f"Benchmark manifest sha256 `{str(c.get('benchmark_manifest_sha256'))[:12]}`, {c.get('samples_evaluated')} "
             f"samples at {c.get('resolution')} px; FID at {c.get('fid_size')} px, local crops at {c.get('local_size')} px; "
             f"post-processing `{c.get('composite')}`; prompts from {c.get('prompt')}.", ""]
    metrics = comp["metrics"]
    for lv in comp["levels"]:
        lines += [f"## {level_title({**lv, 'precision': '/'.join(sorted({str(r['precision']) for r in lv['rows']}))})}",
                  "", "| run | method | s | " + " | ".join(LABELS.get(m, m) for m in metrics) + " |",
                  "|---" * (len(metrics) + 3) + "|"]
        for r in lv["rows"]:
            lines.append(f"| {r['run']} | {r['method']} | {r['precision']} | "
                         + " | ".join(_fmt(r["metrics"][m]) if m in r["metrics"] else "n/a" for m in metrics) + " |")
        lines.append("")
    lines += ["Runs: " + ", ".join(f"{k} = `{v}`" for k, v in comp["runs"].items()), ""]
    return "\n".join(lines)


def csv_text(comp: dict) -> str:
    """One row per (level, run, method); a column per metric (METRIC_ORDER), empty where not computed."""
    metrics = [m for m in METRIC_ORDER if any(m in r["metrics"] for lv in comp["levels"] for r in lv["rows"])]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["level", "level_type", "run", "method", "precision"] + metrics)
    for lv in comp["levels"]:
        for r in lv["rows"]:
            w.writerow([lv["benchmark_level"], lv["type"], r["run"], r["method"], r["precision"]]
                       + ["" if r["metrics"].get(m) is None else repr(r["metrics"][m]) for m in metrics])
    return buf.getvalue()


def write(comp: dict, out: str) -> tuple[str, str]:
    os.makedirs(out, exist_ok=True)
    md, cs = os.path.join(out, "compare.md"), os.path.join(out, "compare.csv")
    with open(md, "w") as f:
        f.write(markdown(comp))
    with open(cs, "w") as f:
        f.write(csv_text(comp))
    return md, cs
