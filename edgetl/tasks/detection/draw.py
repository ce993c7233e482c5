"""Images with their detections drawn on them (``predict --draw DIR``), with PIL only.

Label text comes from files (class names in annotations, a bundle's labels) and is untrusted:
control and format characters (newlines, bidirectional overrides, escape sequences) are
replaced and the text is cut to a readable length before it is drawn. The file is written
atomically (a temporary file beside it, then ``os.replace``). Torch-free.
"""

from __future__ import annotations

import colorsys
import hashlib
import os
import secrets
import unicodedata
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from edgetl.errors import ConfigError, DataError
from edgetl.modalities.image import load_image

__all__ = ["draw_detections", "sanitize_label", "label_color", "MAX_LABEL_CHARS"]

MAX_LABEL_CHARS = 48


def sanitize_label(text: Any) -> str:
    """Printable text for a label: control/format/unassigned characters become "?", whitespace
    runs one space, at most :data:`MAX_LABEL_CHARS` characters."""
    text = str(text)
    out = []
    for c in text[: MAX_LABEL_CHARS * 4]:
        if c.isspace():
            c = " "
        elif unicodedata.category(c)[0] == "C":  # Cc, Cf (bidi overrides), Cs, Co, Cn
            c = "?"
        if not (c == " " and out and out[-1] == " "):
            out.append(c)
    s = "".join(out).strip()
    return s if len(s) <= MAX_LABEL_CHARS else s[: MAX_LABEL_CHARS - 1] + "…"


def label_color(label: str) -> tuple[int, int, int]:
    """A bright colour fixed by the label's name (the same class has the same colour everywhere)."""
    hue = int.from_bytes(hashlib.sha256(label.encode("utf-8", "replace")).digest()[:2], "big") / 65536.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _detections(detections: Sequence[Any]) -> list[tuple[list[float], float, str]]:
    out = []
    for i, det in enumerate(detections):
        if isinstance(det, Mapping):
            box, score, label = det.get("box"), det.get("score"), det.get("label")
        else:
            box, score, label = det
        box = np.asarray(box, dtype=np.float64).reshape(-1)
        if box.shape != (4,) or not np.isfinite(box).all():
            raise ConfigError(f"detection {i}: box must be four finite numbers [x1, y1, x2, y2]")
        out.append((box.tolist(), float(score) if score is not None else float("nan"), sanitize_label(label)))
    return out


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def draw_detections(image: Any, detections: Sequence[Any], out_path: str | os.PathLike) -> Path:
    """Draw ``detections`` on ``image`` (a path, PIL image or HxWx3 uint8 array) and write it
    to ``out_path`` (format from its extension). Each detection: a mapping ``{"label", "score",
    "box": [x1, y1, x2, y2]}`` (predict's output) or a tuple ``(box, score, label)``; boxes in
    the image's pixels. Returns ``out_path``."""
    out_path = Path(out_path)
    ext = out_path.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in ("PNG", "JPEG", "BMP", "WEBP", "TIFF", "GIF", "PPM"):
        raise ConfigError(f"{out_path}: cannot tell the image format from {ext or 'no extension'!r}; "
                          "use .png or .jpg")
    img = load_image(image).copy()
    dets = _detections(detections)
    draw = ImageDraw.Draw(img)
    line = max(1, round(min(img.size) / 300))
    font = _font(max(10, min(img.size) // 40))
    for box, score, label in dets:
        color = label_color(label)
        x1, y1, x2, y2 = box
        draw.rectangle([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], outline=color, width=line)
        text = label if np.isnan(score) else f"{label} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        tx = min(max(0.0, min(x1, x2)), max(0.0, img.width - tw - 2))
        ty = min(y1, y2) - th - 2 if min(y1, y2) - th - 2 >= 0 else min(y1, y2)
        draw.rectangle([tx, ty, tx + tw + 2, ty + th + 2], fill=color)
        draw.text((tx + 1 - left, ty + 1 - top), text, fill=(0, 0, 0), font=font)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{secrets.token_hex(4)}")
    try:
        img.save(tmp, format=fmt)
        os.replace(tmp, out_path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{out_path}: cannot write the image ({exc.strerror or exc})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out_path
