"""The paper's OpenImages benchmark (Sec. 5): test images above 512 px, one mask each, drawn from an
inpainting shard set built from the OpenImages test split (`smartbrush build --openimages-... --schedule
exact-box`). Samples are kept byte for byte; the others are listed in rejected.parquet as filtered.

"Above 512 px" is read as both sides of the source image at least `min_side` (default 512). The one
mask of an image is drawn with a generator seeded by (seed, source, image id), so the draw does not
depend on the order of the set or favour any annotation id.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator

from smartbrush.eval.bench_writer import write_set
from smartbrush.schemas import files
from smartbrush.schemas import manifest as manifest_schema
from smartbrush.schemas import rejected as rejected_schema
from smartbrush.schemas.shard_sample import sample_meta
from smartbrush.schemas.shard_set import iter_samples

STAGE = "bench_import"
MIN_IMAGE_SIDE = "min_image_side"
PER_IMAGE = "max_instances_per_image"


def _filtered(key: str, source: str, reason: str, detail: str, input_path: str) -> dict:
    return {"record_id": key, "source": source, "stage": STAGE, "kind": rejected_schema.FILTERED,
            "reason": reason, "detail": detail, "input": input_path}


def keep_one_per_image(image_keys: dict[tuple[str, str], list[str]], seed: int) -> set[str]:
    """The drawn key of every image (keys sorted first, so the draw depends on the set only)."""
    return {random.Random(f"{seed}:{src}:{image}").choice(sorted(keys)) for (src, image), keys in image_keys.items()}


def select(shard_set: str, min_side: int = 512, seed: int = 0) -> tuple[Iterator[tuple[str, dict]], list[dict], dict]:
    """((key, members) kept, in the set's order; filtered rows; the source manifest) of the paper's draw.

    Two passes over the set: the json members to decide, then the kept samples' bytes, streamed
    (nothing but keys and rows is held)."""
    manifest = manifest_schema.read_manifest(shard_set)
    if manifest.get("kind") != manifest_schema.KIND_INPAINTING:
        raise ValueError(f"{shard_set}: a {manifest.get('kind')!r} set; the paper's OpenImages draw needs an "
                         "inpainting shard set built from OpenImages")
    where = files.join(shard_set, manifest_schema.FILE_NAME)
    rows, by_image = [], defaultdict(list)
    for sample in iter_samples(shard_set, exts={"json"}, manifest=manifest):
        meta = sample_meta(sample)
        width, height = meta["image_size"]
        if min(width, height) < min_side:
            rows.append(_filtered(sample["__key__"], str(meta["source"]), MIN_IMAGE_SIDE,
                                  f"image {width}x{height}, a side under {min_side} px", where))
        else:
            by_image[(str(meta["source"]), str(meta["image_id"]))].append(sample["__key__"])
    kept = keep_one_per_image(by_image, seed)
    for (source, image), keys in by_image.items():
        rows += [_filtered(k, source, PER_IMAGE, f"image {image}: one mask per image", where)
                 for k in keys if k not in kept]
    members = ((s["__key__"], {k: v for k, v in s.items() if not k.startswith("__")})
               for s in iter_samples(shard_set, manifest=manifest) if s["__key__"] in kept)
    return members, rows, manifest


def import_set(shard_set: str, out: str, min_side: int = 512, seed: int = 0, samples_per_shard: int = 1000) -> dict:
    """Write the draw into `out` (a new folder); returns its manifest. Its one input is the built
    set's manifest.json (size and sha256 recorded)."""
    members, rows, source = select(shard_set, min_side, seed)
    config = {"format": "openimages-paper", "src": shard_set, "min_image_side": min_side, "seed": seed}
    return write_set(out, members, rows, [files.join(shard_set, manifest_schema.FILE_NAME)], config,
                     source["mask_schedule"], samples_per_shard)
