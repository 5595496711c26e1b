"""`smartbrush <verb>`: one entry point. Job verbs parse their own flags; Beam pipeline options pass
through, and anything that is neither is an error naming it (flags.py)."""

from __future__ import annotations

import gc
import importlib
import logging
import os
import sys

# verb -> (module, function, one-line help). Modules load lazily so `--help` stays fast.
VERBS: dict[str, tuple[str, str, str]] = {
    "demo": ("smartbrush.pipeline.commands.demo", "main", "whole corpus build on the embedded sample data, then stats and preview"),
    "build": ("smartbrush.pipeline.commands.build", "run_build", "ingest + caption + shard in one Beam pipeline"),
    "ingest": ("", "", "annotations to an instance table: `ingest coco` | `ingest openimages`"),
    "caption": ("smartbrush.pipeline.commands.caption", "run", "captions for an instance table"),
    "shard": ("smartbrush.pipeline.commands.build", "run_shard", "instance table to inpainting shards"),
    "remask": ("smartbrush.pipeline.commands.remask", "run", "existing shards + new mask schedule to new shards"),
    "laion": ("smartbrush.pipeline.commands.laion", "run", "LAION-Aesthetics parquet through img2dataset to text-to-image shards"),
    "verify": ("smartbrush.pipeline.commands.verify", "main", "check every shard against its manifest"),
    "stats": ("smartbrush.pipeline.commands.stats", "main", "counts and distributions of a shard set"),
    "train": ("smartbrush.train.cli", "main", "SmartBrush fine-tuning on inpainting (+ text-to-image) shards"),
    "preview": ("smartbrush.pipeline.commands.preview", "main", "contact sheet of samples with every mask level"),
    "sample": ("smartbrush.eval.commands", "sample_main", "inpaint one image with a SmartBrush checkpoint at a mask precision level"),
    "eval": ("smartbrush.eval.commands", "eval_main", "FID, local FID, CLIP score, background preservation, mask IoU vs baselines"),
    "bench": ("smartbrush.eval.commands", "bench_main", "import a published benchmark (BrushBench, EditBench, HD-Painter COCO, COCO lists) as a shard set"),
}

INGEST_SOURCES = {"coco", "openimages"}


def usage() -> str:
    lines = ["usage: smartbrush <verb> [flags]   (smartbrush <verb> --help for a verb's flags)", "", "verbs:"]
    lines += [f"  {verb:<9} {help_}" for verb, (_, _, help_) in VERBS.items()]
    return "\n".join(lines)


def _quiet_logging() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Beam warns about optional GCP client libraries on every import; they are not needed locally.
    for handler in logging.getLogger().handlers:
        handler.addFilter(lambda record: "apitools not found" not in record.getMessage())
    logging.getLogger("smartbrush").setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    if verb not in VERBS:
        print(f"smartbrush: unknown verb {verb!r}\n\n{usage()}", file=sys.stderr)
        return 2
    _quiet_logging()
    if verb == "ingest":
        if not rest or rest[0] not in INGEST_SOURCES:
            print("usage: smartbrush ingest {coco,openimages} [flags]  (--help after the source for flags)",
                  file=sys.stderr if rest and rest[0] not in ("-h", "--help") else sys.stdout)
            return 0 if rest and rest[0] in ("-h", "--help") else 2
        from smartbrush.pipeline.commands.build import run_ingest

        run_ingest(rest[1:], source=rest[0])
        return 0
    module, func, _ = VERBS[verb]
    result = getattr(importlib.import_module(module), func)(rest)
    return result if isinstance(result, int) else 0


def entry() -> None:
    """The console script (and `python -m smartbrush.cli`): main(), then an exit that skips the
    interpreter's final collections over every imported module (pipeline/transforms/worker.py);
    tests call main() instead."""
    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    entry()
