"""Image reading with Pillow: any mode to RGB, and a pixel-count limit against decompression bombs.

Modes: RGB as is; L, LA, 1, P, PA, RGBA, RGBX, CMYK, YCbCr, LAB, HSV through Pillow's ``convert("RGB")``
(alpha is dropped, as timm and torchvision do); 16-bit and 32-bit integer or float greyscale (``I;16*``,
``I``, ``F``) are rescaled to 8 bits by hand because ``convert`` would clip them. Only the first frame of
an animated file is read.

``timeout_s`` limits probing and decoding in process: Pillow decodes in C with the GIL released, so the
work runs in a helper thread that is abandoned past the limit (see deadline.py) and the image is skipped
as ``timeout``.
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image

from mmvit.data.errors import BadSample, open_failure
from mmvit.data.readers import deadline

# Pillow's own bomb limit is ~179 Mpx; a training image that large is a mistake or an attack either way.
DEFAULT_MAX_PIXELS = 64_000_000


def _head(src: str | bytes, name: str) -> bytes:
    if isinstance(src, (bytes, bytearray)):
        head = bytes(src[:16])
    else:
        if not os.path.exists(src):
            raise BadSample("missing_file", name, "no such file")
        with open(src, "rb") as f:
            head = f.read(16)
    if not head:
        raise BadSample("empty_file", name, "zero bytes")
    return head


def _open(src: str | bytes, name: str, max_pixels: int) -> Image.Image:
    head = _head(src, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else src)
    except Image.DecompressionBombError as e:
        raise BadSample("too_large", name, str(e)[:200]) from None
    except Exception as e:  # noqa: BLE001  (UnidentifiedImageError, OSError, SyntaxError, ... from broken headers)
        raise open_failure(head, name, e, expect="image") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise BadSample("corrupt", name, f"image size {w}x{h}")
    if w * h > max_pixels:
        img.close()
        raise BadSample("too_large", name, f"{w}x{h} = {w * h} pixels > max_image_pixels={max_pixels}")
    return img


def probe_image(src: str | bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                timeout_s: float | None = None) -> dict:
    """``{"width", "height", "mode"}`` from the header only (no pixel decoding)."""
    return deadline.call(_probe, src, name, max_pixels, timeout_s=timeout_s, name=name, what="probing the image")


def _probe(src: str | bytes, name: str, max_pixels: int) -> dict:
    img = _open(src, name, max_pixels)
    try:
        return {"width": img.size[0], "height": img.size[1], "mode": img.mode, "frames": 1}
    finally:
        img.close()


def to_rgb(img: Image.Image) -> np.ndarray:
    """Any Pillow image to uint8 ``[H, W, 3]``. Raises ``ValueError`` for modes that have no RGB meaning."""
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img).astype(np.float64)
        if mode.startswith("I;16"):
            top = 65535.0
        elif mode == "I":
            top = 65535.0 if a.max(initial=0) > 255 else 255.0  # 16-bit PNGs open as "I"
        else:
            top = 1.0 if a.max(initial=0) <= 1.0 else 255.0
        a = np.clip(np.nan_to_num(a) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(a[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode != "RGB":
        img = img.convert("RGB")
    out = np.asarray(img)
    if out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3:
        raise ValueError(f"mode {mode} gave an array of {out.dtype} {out.shape}")
    return out


def decode_image(src: str | bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                 timeout_s: float | None = None) -> np.ndarray:
    """uint8 ``[H, W, 3]``; raises :class:`BadSample` (``timeout`` past ``timeout_s``)."""
    return deadline.call(_decode, src, name, max_pixels, timeout_s=timeout_s, name=name, what="decoding the image")


def _decode(src: str | bytes, name: str, max_pixels: int) -> np.ndarray:
    img = _open(src, name, max_pixels)
    try:
        try:
            img.load()
        except Exception as e:  # noqa: BLE001  (truncated or corrupt pixel data: OSError, SyntaxError, ...)
            raise BadSample("corrupt", name, f"{type(e).__name__}: {e}"[:200]) from None
        try:
            return np.array(to_rgb(img))  # a writable copy (Pillow's buffer is read-only)
        except Exception as e:  # noqa: BLE001  (Pillow raises ValueError or others for unconvertible modes)
            raise BadSample("bad_pixel_format", name, f"mode {img.mode}: {type(e).__name__}: {e}"[:200]) from None
    finally:
        img.close()


def read_image(path: str | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, timeout_s: float | None = None) -> torch.Tensor:
    """An image file (or its encoded bytes) as uint8 ``[H, W, 3]`` RGB.

    Raises:
        BadSample: missing, empty, not an image, corrupt, unconvertible mode, more than ``max_pixels``, or
            slower than ``timeout_s``.
    """
    name = path if isinstance(path, str) else "<bytes>"
    return torch.from_numpy(decode_image(path, name, max_pixels, timeout_s))
