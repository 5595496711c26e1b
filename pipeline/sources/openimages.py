"""OpenImages v6 segmentations: CSV rows and mask PNGs to instance-table rows."""

from __future__ import annotations

import csv

from smartbrush.config import FilterConfig
from smartbrush.pipeline.storage import fileio
from smartbrush.pipeline.sources.coco import apply_filters, instance_id
from smartbrush.pipeline.errors import RecordError, rejection
from smartbrush.pipeline.imaging.images import read_file_header
from smartbrush.pipeline.imaging.masks import mask_box, openimages_mask_to_rle, rle_area_and_box

SOURCE = "openimages"
SEGMENTATION_COLUMNS = ("MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin",
                        "BoxYMax", "PredictedIoU", "Clicks")


def _first_line(path: str) -> str:
    with fileio.open_read(path) as f:
        return f.readline().decode("utf-8", errors="replace").strip()


def check_segmentation_csv(path: str) -> None:
    """Fail fast when `path` is not an OpenImages segmentation CSV with the v6 header."""
    header = next(csv.reader([_first_line(path)]), [])
    if tuple(header) != SEGMENTATION_COLUMNS:
        raise ValueError(f"{path}: not an OpenImages segmentation CSV: header {header[:10]}, "
                         f"expected {list(SEGMENTATION_COLUMNS)}")


def check_class_csv(path: str) -> None:
    row = next(csv.reader([_first_line(path)]), [])
    if len(row) != 2 or not row[0].startswith("/"):
        raise ValueError(f"{path}: not an OpenImages class-descriptions CSV (LabelName,DisplayName rows); "
                         f"first row {row}")


def parse_class_line(line: str) -> tuple[str, str] | None:
    row = next(csv.reader([line]), [])
    return (row[0], row[1]) if len(row) == 2 else None


def parse_segmentation_line(line: str) -> dict:
    """One CSV line to a dict; a malformed line gets the key `_error`."""
    row = next(csv.reader([line]), [])
    if len(row) != len(SEGMENTATION_COLUMNS):
        return {"_error": f"{len(row)} fields, expected {len(SEGMENTATION_COLUMNS)}", "_line": line[:200]}
    return dict(zip(SEGMENTATION_COLUMNS, row))


def openimages_image_rows(image_id: str, records: list[dict], labels: dict[str, str], images_dir: str,
                          masks_dir: str, split: str, filters: FilterConfig,
                          input_path: str) -> tuple[list[dict], list[dict]]:
    """Instance rows and rejections for one image's segmentation records.

    Reads the image header (for its size) and each mask PNG; masks are resized to the image.
    """
    rows, rejected, seen = [], [], set()
    image_path = fileio.join(images_dir, f"{image_id}.jpg")
    header, image_error = None, None
    try:
        header = (fileio.retry_io(lambda: read_file_header(image_path), what=f"reading {image_path}")
                  if fileio.exists(image_path) else None)
        if header is None:
            image_error = RecordError("image_missing", image_path)
    except RecordError as e:
        image_error = e
    for rec in sorted(records, key=lambda r: (r.get("BoxID", ""), r.get("MaskPath", ""))):
        box_id = rec.get("BoxID", "")
        iid = instance_id(SOURCE, split, image_id, box_id)

        def reject(reason, detail="", kind="rejected"):
            rejected.append(rejection(iid, SOURCE, "ingest", reason, detail, input_path, kind))

        if image_error is not None:
            reject(image_error.reason, image_error.detail)
            continue
        if iid in seen:
            reject("duplicate_instance", f"BoxID {box_id} repeats in image {image_id}")
            continue
        seen.add(iid)
        label = labels.get(rec["LabelName"])
        if label is None:
            reject("unknown_category", f"LabelName {rec['LabelName']!r} not in the class descriptions")
            continue
        width, height = header.size_for(True)  # OpenImages annotates the image as displayed
        mask_path = fileio.join(masks_dir, rec["MaskPath"])
        try:
            if not fileio.exists(mask_path):
                raise RecordError("mask_missing", mask_path)
            rle = openimages_mask_to_rle(fileio.read_bytes(mask_path), width, height)
        except RecordError as e:
            reject(e.reason, e.detail)
            continue
        area, box = rle_area_and_box(rle)
        if area == 0:
            reject("empty_mask", f"{rec['MaskPath']} covers no pixel")
            continue
        rows.append({
            "instance_id": iid, "source": SOURCE, "split": split, "image_id": image_id, "annotation_id": box_id,
            "image_path": image_path, "image_width": width, "image_height": height,
            "category_id": rec["LabelName"], "label": label, "box_xyxy": list(box), "area": area,
            "iscrowd": False, "mask_rle_counts": rle["counts"], "mask_rle_size": rle["size"], "captions": [],
        })
    kept, filtered = apply_filters(rows, filters, "ingest", input_path)
    return kept, rejected + filtered


def segmentation_rows_from_masks(mask_names: list[str], read_mask) -> list[dict]:
    """OpenImages segmentation CSV rows rebuilt from mask files named
    <ImageID>_m<label>_<BoxID>.png (the official MaskPath pattern); `read_mask(name)` returns the
    mask as a 2-D bool array, from which the normalised box is measured. For fixtures that come
    with masks but no CSV."""
    rows = []
    for name in sorted(mask_names):
        stem = name.rsplit("/", 1)[-1][:-4]
        image_id, label_token, box_id = stem.split("_")
        mask = read_mask(name)
        h, w = mask.shape
        x0, y0, x1, y1 = mask_box(mask)
        rows.append({"MaskPath": name, "ImageID": image_id, "LabelName": "/m/" + label_token[1:], "BoxID": box_id,
                     "BoxXMin": f"{x0 / w:.6f}", "BoxXMax": f"{x1 / w:.6f}", "BoxYMin": f"{y0 / h:.6f}",
                     "BoxYMax": f"{y1 / h:.6f}", "PredictedIoU": "", "Clicks": ""})
    return rows


def write_segmentation_csv(rows: list[dict], path: str) -> None:
    import io as _io

    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SEGMENTATION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    fileio.atomic_write_bytes(path, buf.getvalue().encode())
