"""Hand-made COCO and OpenImages corpora for tests: good images plus every kind of bad input."""

from __future__ import annotations

import io
import json
import pathlib

import numpy as np
from PIL import Image


def picture(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 200, w, dtype=np.float32)[None, :, None] + rng.uniform(0, 55, (h, w, 3))
    return base.clip(0, 255).astype(np.uint8)


def save(im: Image.Image, path: pathlib.Path, fmt: str = "JPEG", **kw) -> None:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    path.write_bytes(buf.getvalue())


def square(x, y, s):
    return [[x, y, x + s, y, x + s, y + s, x, y + s]]


def hostile_coco(root: pathlib.Path) -> dict:
    """Writes root/images/*.jpg and root/instances_test.json. Returns the expected counts."""
    img_dir = root / "images"
    img_dir.mkdir(parents=True)
    images, anns = [], []
    ann_id = 100

    def add_image(iid, name, w, h):
        images.append({"id": iid, "file_name": name, "width": w, "height": h})

    def add_ann(iid, seg, cat=1, crowd=0):
        nonlocal ann_id
        ann_id += 1
        anns.append({"id": ann_id, "image_id": iid, "category_id": cat, "iscrowd": crowd, "segmentation": seg,
                     "area": 0.0, "bbox": [0, 0, 0, 0]})

    # 1: a good RGB JPEG with two objects, one crowd RLE and three broken annotations
    save(Image.fromarray(picture(160, 120, 1)), img_dir / "good.jpg", quality=95)
    add_image(1, "good.jpg", 160, 120)
    add_ann(1, square(20, 20, 40))
    add_ann(1, [[100, 30, 150, 40, 120, 100]], cat=2)
    crowd = np.zeros((120, 160), np.uint8)
    crowd[80:110, 10:60] = 1
    counts, flat, run, val = [], crowd.flatten(order="F"), 0, 0
    for v in flat:
        if v != val:
            counts.append(run)
            run, val = 0, v
        run += 1
    counts.append(run)
    add_ann(1, {"size": [120, 160], "counts": counts}, crowd=1)  # filtered: crowd
    add_ann(1, [[10, 10, 20, 20]])  # rejected: invalid_polygon (2 points)
    add_ann(1, [[10, 10, 20, 20, 30, 30]])  # rejected: invalid_polygon (zero area)
    add_ann(1, {"size": [60, 80], "counts": [4800]})  # rejected: rle_size_mismatch
    add_ann(1, square(5, 5, 20), cat=99)  # rejected: unknown_category
    add_ann(1, square(150, 110, 2))  # filtered: min_area (4 px)
    # 2: grayscale, 3: 16-bit PNG, 4: CMYK JPEG, 5: EXIF-rotated (annotated in the displayed frame)
    save(Image.fromarray(picture(100, 80, 2)[:, :, 0]), img_dir / "gray.jpg")
    add_image(2, "gray.jpg", 100, 80)
    add_ann(2, square(10, 10, 30))
    save(Image.fromarray(picture(100, 80, 3)[:, :, 0].astype(np.uint16) * 200), img_dir / "deep.png", "PNG")
    add_image(3, "deep.png", 100, 80)
    add_ann(3, square(30, 20, 30))
    save(Image.fromarray(picture(100, 80, 4)).convert("CMYK"), img_dir / "cmyk.jpg")
    add_image(4, "cmyk.jpg", 100, 80)
    add_ann(4, square(50, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    save(Image.fromarray(picture(100, 80, 5)), img_dir / "rotated.jpg", exif=exif.tobytes())
    add_image(5, "rotated.jpg", 80, 100)  # displayed frame is 80 wide, 100 tall
    add_ann(5, square(10, 50, 40))
    # 6: missing file, 7: truncated JPEG, 8: not an image, 9: size disagrees, 10: too many pixels
    add_image(6, "missing.jpg", 100, 80)
    add_ann(6, square(10, 10, 30))
    buf = io.BytesIO()
    Image.fromarray(picture(200, 160, 7)).save(buf, format="JPEG")
    (img_dir / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    add_image(7, "truncated.jpg", 200, 160)
    add_ann(7, square(10, 10, 30))
    add_ann(7, square(60, 60, 30))
    (img_dir / "html.jpg").write_bytes(b"<html><body>404</body></html>")
    add_image(8, "html.jpg", 100, 80)
    add_ann(8, square(10, 10, 30))
    save(Image.fromarray(picture(100, 80, 9)), img_dir / "wrongsize.jpg")
    add_image(9, "wrongsize.jpg", 120, 90)
    add_ann(9, square(10, 10, 30))
    save(Image.new("L", (2100, 2100)), img_dir / "bomb.png", "PNG")
    add_image(10, "bomb.png", 2100, 2100)
    add_ann(10, square(100, 100, 300))
    # an annotation whose image has no entry
    add_ann(77, square(10, 10, 30))
    data = {"images": images, "annotations": anns,
            "categories": [{"id": 1, "name": "box"}, {"id": 2, "name": "triangle"}]}
    (root / "instances_test.json").write_text(json.dumps(data))
    return {
        "inputs": len(anns),
        "written": 6,  # 2 on good.jpg + gray, deep, cmyk, rotated
        "rejected": {"image_missing": 1, "image_too_large": 1, "image_size_mismatch": 1, "image_unreadable": 3,
                     "invalid_polygon": 2, "rle_size_mismatch": 1, "unknown_category": 1, "unknown_image": 1},
        "filtered": {"crowd": 1, "min_area": 1},
    }


def hostile_openimages(root: pathlib.Path) -> tuple[dict, dict]:
    """Writes images/, masks/, classes.csv, segmentation.csv. Returns (flags, expected counts)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    save(Image.fromarray(picture(128, 96, 11)), root / "images" / "aaaa000000000001.jpg")
    save(Image.fromarray(picture(128, 96, 12)), root / "images" / "aaaa000000000002.jpg")
    mask = np.zeros((48, 64), bool)  # masks come at another resolution than the image
    mask[10:40, 8:30] = True
    save(Image.fromarray(mask), root / "masks" / "aaaa000000000001_m0bt9lr_b0000001.png", "PNG")
    mask2 = np.zeros((192, 256), bool)
    mask2[20:150, 100:240] = True
    save(Image.fromarray(mask2), root / "masks" / "aaaa000000000002_m0bt9lr_b0000002.png", "PNG")
    (root / "masks" / "aaaa000000000002_m0bt9lr_b0000003.png").write_bytes(b"garbage")
    save(Image.fromarray(mask2), root / "masks" / "aaaa000000000002_m0zzzzz_b0000004.png", "PNG")
    header = "MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks"
    rows = [
        "aaaa000000000001_m0bt9lr_b0000001.png,aaaa000000000001,/m/0bt9lr,b0000001,0.1,0.5,0.2,0.8,0.9,",
        "aaaa000000000002_m0bt9lr_b0000002.png,aaaa000000000002,/m/0bt9lr,b0000002,0.4,0.9,0.1,0.8,0.9,",
        "aaaa000000000002_m0bt9lr_b0000003.png,aaaa000000000002,/m/0bt9lr,b0000003,0.4,0.9,0.1,0.8,0.9,",
        "aaaa000000000002_m0zzzzz_b0000004.png,aaaa000000000002,/m/0zzzzz,b0000004,0.4,0.9,0.1,0.8,0.9,",
        "aaaa000000000002_m0bt9lr_b0000005.png,aaaa000000000002,/m/0bt9lr,b0000005,0.4,0.9,0.1,0.8,0.9,",
        "aaaa000000000009_m0bt9lr_b0000006.png,aaaa000000000009,/m/0bt9lr,b0000006,0.4,0.9,0.1,0.8,0.9,",
        "this,row,is,broken",
    ]
    (root / "segmentation.csv").write_text("\n".join([header] + rows) + "\n")
    (root / "classes.csv").write_text("/m/0bt9lr,Dog\n/m/0663v,Pizza\n")
    flags = ["--openimages-segmentations", str(root / "segmentation.csv"), "--openimages-masks", str(root / "masks"),
             "--openimages-images", str(root / "images"), "--openimages-classes", str(root / "classes.csv")]
    expected = {"inputs": 7, "written": 2,
                "rejected": {"mask_unreadable": 1, "unknown_category": 1, "mask_missing": 1, "image_missing": 1,
                             "invalid_annotation": 1},
                "filtered": {}}
    return flags, expected
