"""`smartbrush laion`: LAION-Aesthetics metadata parquet -> filter -> img2dataset -> text-to-image shards.

Output folder: img2dataset's own webdataset shards (00000.tar with KEY.jpg/.txt/.json, plus its
00000.parquet and 00000_stats.json), laion_download_list.parquet (the rows that passed the filters),
config.yaml, rejected.parquet and manifest.json. Samples keep img2dataset's layout; the training loader
(smartbrush.train.data) reads a sample whose json has no "task" as text-to-image.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq

from smartbrush.flags import parse_job_args
from smartbrush.pipeline.commands.common import prepare_output
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.sources.laion_filter import (SOURCE_FILE, SOURCE_ROW, TEXT, URL, Columns, LaionFilters,
                                              check_columns, expand_inputs, read_schema_names,
                                              write_download_list)
from smartbrush.pipeline.sources.laion_fold import fold_shard, fold_stats, shard_stem, unrecorded_rows
from smartbrush.pipeline.storage.shards import scan_tar
from smartbrush.pipeline.storage.identity import make_identity
from smartbrush.pipeline.storage.manifest import finalize_set, input_file_entry
from smartbrush.schemas.manifest import shard_info
from smartbrush.schemas import manifest as manifest_schema

log = logging.getLogger("smartbrush")

DOWNLOAD_LIST = "laion_download_list.parquet"
RESIZE_MODES = ("center_crop", "keep_ratio", "keep_ratio_largest", "border", "no")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="smartbrush laion",
        description="Filter LAION-Aesthetics metadata parquet files, download the images with img2dataset "
                    "(webdataset shards resized to the training resolution), and write manifest.json and "
                    "rejected.parquet so that `smartbrush verify` checks the set. Re-running the same command "
                    "resumes an interrupted download.",
        epilog="Many machines: --distributor pyspark with a Spark session (see docs/laion.md).")
    p.add_argument("--parquet", nargs="+", required=True,
                   help="LAION metadata parquet file(s); quoted glob patterns are expanded (local, gs://, s3://)")
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_argument_group("filters (a neutral value turns a filter off: 0 for minimums, 1 for maximums)")
    d = LaionFilters()
    g.add_argument("--min-aesthetic", type=float, default=d.min_aesthetic, help="keep score >= this (default %(default)s)")
    g.add_argument("--max-punsafe", type=float, default=d.max_punsafe, help="keep punsafe <= this (default %(default)s)")
    g.add_argument("--max-pwatermark", type=float, default=d.max_pwatermark,
                   help="keep pwatermark <= this (default %(default)s)")
    g.add_argument("--min-width", type=int, default=d.min_width, help="keep WIDTH >= this (default %(default)s)")
    g.add_argument("--min-height", type=int, default=d.min_height, help="keep HEIGHT >= this (default %(default)s)")
    g = p.add_argument_group("columns")
    g.add_argument("--url-col", default=URL)
    g.add_argument("--caption-col", default=TEXT)
    g.add_argument("--score-col", help="aesthetic score column (default: AESTHETIC_SCORE, else aesthetic)")
    g = p.add_argument_group("images")
    g.add_argument("--resolution", type=int, default=512, help="training resolution R (default %(default)s)")
    g.add_argument("--resize-mode", choices=RESIZE_MODES, default="center_crop",
                   help="img2dataset resize mode; center_crop gives R x R (default %(default)s)")
    g.add_argument("--encode-quality", type=int, default=95, help="JPEG quality (default %(default)s)")
    g.add_argument("--samples-per-shard", type=int, default=10000, help="rows per img2dataset shard")
    g.add_argument("--extract-exif", action="store_true", help="keep the source image's EXIF in the json")
    g = p.add_argument_group("download")
    g.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="download processes (default: cores)")
    g.add_argument("--threads", type=int, default=64, help="download threads per process (default %(default)s)")
    g.add_argument("--timeout", type=int, default=10, help="seconds per request (default %(default)s)")
    g.add_argument("--retries", type=int, default=2, help="retries per URL (default %(default)s)")
    g.add_argument("--user-agent-token", help="token added to the User-Agent (X-Robots-Tag directives honour it)")
    g.add_argument("--distributor", choices=("multiprocessing", "pyspark"), default="multiprocessing")
    g.add_argument("--subjob-size", type=int, default=1000, help="shards per Spark job (pyspark)")
    g.add_argument("--max-shard-retry", type=int, default=1, help="img2dataset retries of a failed shard")
    return p


def resolved_config(args: argparse.Namespace) -> dict:
    """Everything that decides the content of the set: config.yaml and the manifest's "config".
    Processes, threads and the distributor are left out: they change speed, not samples."""
    return {
        "parquet": list(args.parquet),  # expanded by run()
        "filters": filters_of(args).to_dict(),
        "columns": {"url": args.url_col, "caption": args.caption_col, "score": args.score_col},
        "images": {"resolution": args.resolution, "resize_mode": args.resize_mode,
                   "encode_quality": args.encode_quality, "samples_per_shard": args.samples_per_shard,
                   "extract_exif": bool(args.extract_exif)},
        "download": {"timeout": args.timeout, "retries": args.retries, "user_agent_token": args.user_agent_token},
    }


def filters_of(args) -> LaionFilters:
    return LaionFilters(args.min_aesthetic, args.max_punsafe, args.max_pwatermark, args.min_width, args.min_height)


IDENTITY_PATH = ("_smartbrush", "identity.json")  # not at the top: img2dataset reads every *.json there


def prepare_laion_output(out_dir: str, config: dict, input_files: list[dict]) -> None:
    """prepare_output with the input files in the identity (a set built with other settings or other
    input bytes is refused: img2dataset would resume the wrong rows), then drop the manifest of an
    earlier run: its presence marks a finished set, and img2dataset's resume scan reads every *.json
    as a shard's stats."""
    identity = make_identity(manifest_schema.KIND_TEXT_TO_IMAGE, config, inputs=input_files)
    prepare_output(out_dir, config, identity, fileio.join(out_dir, *IDENTITY_PATH))
    manifest_path = fileio.join(out_dir, manifest_schema.FILE_NAME)
    if fileio.exists(manifest_path):
        from apache_beam.io.filesystems import FileSystems

        FileSystems.delete([manifest_path])


def download(list_path: str, out_dir: str, args: argparse.Namespace, save_columns: list[str]) -> None:
    """img2dataset as a library, in incremental mode: finished shards (those with a _stats.json) are skipped."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before the import; spawned workers inherit it
    from img2dataset import download as img2dataset_download

    previous = signal.getsignal(signal.SIGINT)  # img2dataset installs its own handler and leaves it
    try:
        img2dataset_download(**img2dataset_kwargs(list_path, out_dir, args, save_columns))
    except SystemExit as e:  # its SIGINT handler exits with status 0
        raise SystemExit(f"img2dataset was interrupted ({e.code}); re-run the same command to resume") from None
    finally:
        signal.signal(signal.SIGINT, previous)


def img2dataset_kwargs(list_path: str, out_dir: str, args: argparse.Namespace, save_columns: list[str]) -> dict:
    return dict(
        url_list=list_path, output_folder=out_dir, input_format="parquet", output_format="webdataset",
        url_col=URL, caption_col=TEXT, save_additional_columns=list(save_columns),
        image_size=args.resolution, resize_mode=args.resize_mode, resize_only_if_bigger=False,
        encode_quality=args.encode_quality, encode_format="jpg", extract_exif=bool(args.extract_exif),
        number_sample_per_shard=args.samples_per_shard, oom_shard_count=5, compute_hash="sha256",
        processes_count=args.processes, thread_count=args.threads, timeout=args.timeout, retries=args.retries,
        distributor=args.distributor, subjob_size=args.subjob_size, max_shard_retry=args.max_shard_retry,
        user_agent_token=args.user_agent_token, incremental_mode="incremental", enable_wandb=False)


def _read_parquet(path: str, columns: list[str] | None = None):
    with fileio.open_read(path) as fh:
        return pq.read_table(fh, columns=columns)


def fold_one_shard(out_dir: str, list_path: str, shard_id: int, per_shard: int, n_rows: int,
                   ) -> tuple[dict, list[dict], dict]:
    """(manifest shard entry, rejected rows, img2dataset's stats) of one finished img2dataset shard;
    n_rows is the download list's length."""
    stem = shard_stem(shard_id)
    rows = _read_parquet(fileio.join(out_dir, f"{stem}.parquet"),
                         ["key", "status", "error_message", "url", SOURCE_FILE, SOURCE_ROW]).to_pylist()
    digest, keys = scan_tar(fileio.join(out_dir, f"{stem}.tar"))
    try:
        written, rejected = fold_shard(rows, keys)
    except ValueError as e:
        raise SystemExit(f"{out_dir}/{stem}.tar: {e}") from None
    if len(rows) != min(per_shard, n_rows - shard_id * per_shard):
        # img2dataset lost rows without a status (it should not): find them in the download list
        part = _read_parquet(list_path, [SOURCE_FILE, SOURCE_ROW]).slice(shard_id * per_shard, per_shard)
        rejected += unrecorded_rows([(r[SOURCE_FILE], r[SOURCE_ROW]) for r in part.to_pylist()], rows)
    stats = json.loads(fileio.read_bytes(fileio.join(out_dir, f"{stem}_stats.json")))
    return shard_info(f"{stem}.tar", written, digest), rejected, stats


def fold_outputs(out_dir: str, list_path: str, n_rows: int, per_shard: int) -> tuple[list[dict], int, list[dict]]:
    """(manifest shard entries, samples written, rejected rows) over every img2dataset shard.

    Fails, writing nothing, when a shard has no _stats.json: img2dataset did not finish it, and re-running
    the same command resumes exactly those shards."""
    n_shards = math.ceil(n_rows / per_shard)
    unfinished = [i for i in range(n_shards)
                  if not fileio.exists(fileio.join(out_dir, f"{shard_stem(i)}_stats.json"))]
    if unfinished:
        raise SystemExit(f"{len(unfinished)} of {n_shards} img2dataset shards did not finish (first: "
                         f"{shard_stem(unfinished[0])}); re-run the same command to resume them")

    def fold(i: int):
        return fold_one_shard(out_dir, list_path, i, per_shard, n_rows)

    with ThreadPoolExecutor(max_workers=min(8, max(1, n_shards))) as pool:  # hashing releases the GIL
        results = list(pool.map(fold, range(n_shards)))
    shards = [info for info, _, _ in results]
    rejected = [r for _, rej, _ in results for r in rej]
    written = sum(s["samples"] for s in shards)
    check_stats(fold_stats([st for _, _, st in results]), n_rows, written, rejected)
    return shards, written, rejected


def check_stats(folded: dict, n_rows: int, written: int, rejected: list[dict]) -> None:
    """img2dataset's own tallies against ours; a difference is worth a warning, ours come from the files."""
    ours: dict = {}
    for r in rejected:
        ours[r["reason"]] = ours.get(r["reason"], 0) + 1
    if (folded["count"], folded["successes"], folded["failed"]) != (n_rows, written, dict(sorted(ours.items()))):
        log.warning("img2dataset's _stats.json (%s) differ from its shard files (rows %d, written %d, failed %s)",
                    folded, n_rows, written, ours)


def run(argv: list[str] | None = None) -> dict:
    """Returns the manifest written."""
    args, _ = parse_job_args(build_parser(), argv, beam=False)  # img2dataset: no Beam options
    filters = filters_of(args)
    cols = Columns(args.url_col, args.caption_col, args.score_col)
    try:  # fail at once, before touching the output folder
        args.parquet = expand_inputs(args.parquet)
        for path in args.parquet:
            check_columns(read_schema_names(path), filters, cols, path)
    except (ValueError, FileNotFoundError, OSError) as e:
        raise SystemExit(str(e)) from None
    config = resolved_config(args)
    input_files = [input_file_entry(p) for p in args.parquet]
    prepare_laion_output(args.out, config, input_files)
    list_path = fileio.join(args.out, DOWNLOAD_LIST)
    n_inputs, n_kept, before_download = write_download_list(args.parquet, list_path, filters, cols)
    log.info("laion: %d rows, %d to download, %d filtered or rejected before download", n_inputs, n_kept,
             len(before_download))
    if n_kept:
        save_columns = [c for c in read_schema_names(list_path) if c not in (URL, TEXT)]
        download(list_path, args.out, args, save_columns)
    shards, written, failed = fold_outputs(args.out, list_path, n_kept, args.samples_per_shard)
    rejected = before_download + failed
    manifest = finalize_set(args.out, manifest_schema.KIND_TEXT_TO_IMAGE, config, None, input_files, n_inputs, shards,
                            rejected)
    c = manifest["counts"]
    log.info("laion: %d written, rejected %s, filtered %s", written, c["rejected"], c["filtered"])
    return manifest

