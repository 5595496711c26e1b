"""COCO instances JSON: streaming reads and per-image conversion to instance-table rows."""

from __future__ import annotations

import ijson

from smartbrush.config import FilterConfig
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.errors import RecordError, rejection
from smartbrush.pipeline.imaging.masks import rle_area_and_box, segmentation_to_rle

SOURCE = "coco"
_TOP_LEVEL_KEYS = {"info", "licenses", "images", "annotations", "categories"}


def check_coco_file(path: str) -> None:
    """Fail fast, on the launcher, when `path` is not a COCO instances JSON (reads only its start)."""
    try:
        with fileio.open_read(path) as f:
            for prefix, event, value in ijson.parse(f):
                if prefix == "" and event == "start_map":
                    continue
                if prefix == "" and event == "map_key":
                    if value not in _TOP_LEVEL_KEYS:
                        raise ValueError(f"{path}: not a COCO instances file: top-level key {value!r} "
                                         f"(expected {sorted(_TOP_LEVEL_KEYS)})")
                    return
                raise ValueError(f"{path}: not a COCO instances file: it does not start with a JSON object")
    except ijson.JSONError as e:
        raise ValueError(f"{path}: not a COCO instances file: invalid JSON ({e})") from None
    raise ValueError(f"{path}: not a COCO instances file: empty JSON object")


_SECTIONS = (("images.item", "image"), ("annotations.item", "annotation"), ("categories.item", "category"))


def iter_coco(path: str, chunk: int = 1 << 20):
    """(kind, object) for every image, annotation and category of a COCO file, in file order, from a
    single streamed read: the three sections are parsed from the same chunks, so an object store
    serves the file once and memory holds one chunk's objects."""
    sinks = {kind: ijson.sendable_list() for _, kind in _SECTIONS}
    coros = [ijson.items_coro(sinks[kind], prefix, use_float=True) for prefix, kind in _SECTIONS]

    def drain():
        for kind, sink in sinks.items():
            for obj in sink:
                yield kind, obj
            del sink[:]

    with fileio.open_read(path) as f:
        while block := f.read(chunk):
            for coro in coros:
                coro.send(block)
            yield from drain()
    for coro in coros:
        coro.close()
    yield from drain()


def categories_by_id(categories: list[dict], path: str) -> dict[int, str]:
    cats = {int(c["id"]): str(c["name"]) for c in categories}
    if not cats:
        raise ValueError(f"{path}: COCO file has no 'categories'")
    return cats


def image_record(image: dict, images_dir: str, split: str) -> dict:
    """The fields of a COCO `images` entry that instance rows carry."""
    return {
        "image_id": str(image["id"]),
        "image_path": fileio.join(images_dir, image["file_name"]),
        "image_width": int(image["width"]),
        "image_height": int(image["height"]),
        "split": split,
    }


def instance_id(source: str, split: str, image_id: str, annotation_id: str) -> str:
    return f"{source}_{split}_{image_id}_{annotation_id}".replace(".", "-").replace("/", "-")


def apply_filters(rows: list[dict], filters: FilterConfig, stage: str, input_path: str) -> tuple[list[dict], list[dict]]:
    """The size and count filters; returns (kept rows, filtered rejection rows)."""
    kept, dropped = [], []
    for row in rows:
        x0, y0, x1, y1 = row["box_xyxy"]
        if row["area"] < filters.min_area:
            dropped.append(rejection(row["instance_id"], row["source"], stage, "min_area",
                                     f"area {row['area']} < {filters.min_area}", input_path, kind="filtered"))
        elif min(x1 - x0, y1 - y0) < filters.min_box_side:
            dropped.append(rejection(row["instance_id"], row["source"], stage, "min_box_side",
                                     f"box {x1 - x0}x{y1 - y0}, min side {filters.min_box_side}", input_path,
                                     kind="filtered"))
        else:
            kept.append(row)
    if filters.max_instances_per_image and len(kept) > filters.max_instances_per_image:
        kept.sort(key=lambda r: (-r["area"], r["instance_id"]))
        for row in kept[filters.max_instances_per_image:]:
            dropped.append(rejection(row["instance_id"], row["source"], stage, "max_instances_per_image",
                                     f"keeps the {filters.max_instances_per_image} largest", input_path,
                                     kind="filtered"))
        kept = kept[:filters.max_instances_per_image]
    kept.sort(key=lambda r: r["instance_id"])
    return kept, dropped


def coco_image_rows(image: dict | None, annotations: list[dict], categories: dict[int, str],
                    filters: FilterConfig, input_path: str, split: str) -> tuple[list[dict], list[dict]]:
    """Instance rows and rejections for one image's annotations. `image` is the image record
    (image_record()) or None when no `images` entry has this id."""
    rows, rejected, seen = [], [], set()
    for ann in sorted(annotations, key=lambda a: str(a.get("id"))):
        ann_id = str(ann.get("id"))
        img_id = str(ann.get("image_id"))
        iid = instance_id(SOURCE, split, img_id, ann_id)

        def reject(reason, detail="", kind="rejected"):
            rejected.append(rejection(iid, SOURCE, "ingest", reason, detail, input_path, kind))

        if image is None:
            reject("unknown_image", f"image_id {img_id} has no entry in 'images'")
            continue
        if iid in seen:
            reject("duplicate_instance", f"annotation id {ann_id} repeats in image {img_id}")
            continue
        seen.add(iid)
        try:
            label = categories[int(ann["category_id"])]
        except (KeyError, TypeError, ValueError):
            reject("unknown_category", f"category_id {ann.get('category_id')!r}")
            continue
        iscrowd = bool(ann.get("iscrowd", 0))
        if iscrowd and not filters.include_crowd:
            reject("crowd", "iscrowd=1", kind="filtered")
            continue
        if "segmentation" not in ann:
            reject("invalid_annotation", "no 'segmentation'")
            continue
        try:
            rle = segmentation_to_rle(ann["segmentation"], image["image_height"], image["image_width"])
        except RecordError as e:
            reject(e.reason, e.detail)
            continue
        area, box = rle_area_and_box(rle)
        if area == 0:
            reject("empty_mask", "the segmentation covers no pixel")
            continue
        rows.append({
            "instance_id": iid, "source": SOURCE, "split": split, "image_id": img_id, "annotation_id": ann_id,
            "image_path": image["image_path"], "image_width": image["image_width"],
            "image_height": image["image_height"], "category_id": str(int(ann["category_id"])), "label": label,
            "box_xyxy": list(box), "area": area, "iscrowd": iscrowd,
            "mask_rle_counts": rle["counts"], "mask_rle_size": rle["size"], "captions": [],
        })
    kept, filtered = apply_filters(rows, filters, "ingest", input_path)
    return kept, rejected + filtered
