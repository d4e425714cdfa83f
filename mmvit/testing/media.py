"""Small synthetic media for tests and benchmarks: frame-coded videos, images in every Pillow mode, and
broken files of every kind the loader must survive.

Each video frame carries its own index as 8 black/white blocks across the top half (robust to lossy
coding), so that a decoded frame can be identified with :func:`frame_index`.
"""

from __future__ import annotations

import io
import os
from fractions import Fraction

import numpy as np

BITS = 8


def frame_pattern(i: int, h: int, w: int) -> np.ndarray:
    """uint8 ``[h, w, 3]``: bits of ``i`` as blocks in the top half, a colour that changes with ``i`` below."""
    f = np.zeros((h, w, 3), np.uint8)
    bw = w // BITS
    for b in range(BITS):
        if (i >> b) & 1:
            f[: h // 2, b * bw:(b + 1) * bw] = 255
    f[h // 2:, :, 0] = (i * 37) % 256
    f[h // 2:, :, 1] = 128
    f[h // 2:, :, 2] = 255 - (i * 37) % 256
    return f


def frame_index(frame: np.ndarray) -> int:
    """The index coded in a decoded ``[h, w, 3]`` frame by :func:`frame_pattern`."""
    h, w = frame.shape[:2]
    bw = w // BITS
    bits = [frame[h // 8: h // 2 - h // 8, b * bw + bw // 4: (b + 1) * bw - bw // 4].mean() > 127
            for b in range(BITS)]
    return sum(1 << b for b, v in enumerate(bits) if v)


def write_video(path: str, frames: int = 16, h: int = 64, w: int = 96, fps: int = 10, codec: str = "libx264",
                gop: int = 5, faststart: bool = False) -> str:
    """Encode ``frames`` coded frames with PyAV (libx264 by default; libvpx-vp9 for .webm, mpeg4 for .avi)."""
    import av

    options = {"movflags": "faststart"} if faststart else {}
    container = av.open(path, "w", options=options)
    try:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.time_base = Fraction(1, fps)
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "ultrafast", "g": str(gop), "bf": "2"}
        else:
            stream.bit_rate = 400_000
            stream.codec_context.gop_size = gop
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, h, w), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path


def write_audio_only(path: str) -> str:
    """A valid container with an audio stream and no video stream."""
    import av

    container = av.open(path, "w")
    try:
        stream = container.add_stream("aac", rate=8000)
        layout = "mono"
        for i in range(4):
            samples = np.zeros((1, 1024), np.float32)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = 8000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    finally:
        container.close()
    return path


# Every mode the loader must turn into RGB, with a file format that can store it.
MODES = {"RGB": "jpg", "L": "png", "LA": "png", "P": "png", "PA": "tif", "RGBA": "png", "CMYK": "jpg",
         "I;16": "png", "I": "tif", "F": "tif", "1": "png", "YCbCr": "jpg"}


def image_in_mode(mode: str, h: int = 40, w: int = 56, seed: int = 0):
    """A Pillow image of ``mode`` with random content."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.random((h, w), dtype=np.float32))
    if mode in ("P", "PA"):
        p = rgb.convert("P")
        p.info["transparency"] = 0
        return p.convert("PA") if mode == "PA" else p
    return rgb.convert(mode)


def write_image(path: str, h: int = 40, w: int = 56, mode: str = "RGB", seed: int = 0) -> str:
    """Save an image; the format follows the extension (use .png or .tif for the modes JPEG cannot hold)."""
    image_in_mode(mode, h, w, seed).save(path)
    return path


def truncate(src: str, dst: str, fraction: float = 0.5) -> str:
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: max(1, int(len(data) * fraction))])
    return dst


def corrupt_middle(src: str, dst: str, start: float = 0.3, length: int = 4096, seed: int = 0) -> str:
    """Overwrite bytes in the middle of a file with random ones."""
    with open(src, "rb") as f:
        data = bytearray(f.read())
    a = int(len(data) * start)
    data[a:a + length] = np.random.default_rng(seed).integers(0, 256, min(length, len(data) - a),
                                                               dtype=np.uint8).tobytes()
    with open(dst, "wb") as f:
        f.write(bytes(data))
    return dst


def write_bytes(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def encoded_image(h: int = 32, w: int = 48, fmt: str = "PNG", seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(buf, fmt)
    return buf.getvalue()


def make_dirs(*paths: str) -> None:
    for p in paths:
        os.makedirs(p, exist_ok=True)


def make_corpus(root: str, seed: int = 0) -> dict:
    """A small dataset with good and bad samples of every kind, as list files under ``root``.

    Returns ``{"images": list file, "videos": list file, "good": {id: label}, "bad": {id: cause},
    "num_classes": 3}``; ids are the paths as written in the lists.
    """
    make_dirs(os.path.join(root, "img"), os.path.join(root, "vid"))
    good: dict[str, int] = {}
    bad: dict[str, str] = {}
    img_lines, vid_lines = [], []

    def add_img(rel: str, label: int | str, cause: str | None = None) -> None:
        img_lines.append(f"{rel} {label}".rstrip())
        if cause is None:
            good[rel] = int(label)
        else:
            bad[rel] = cause

    sizes = [(24, 40), (48, 32), (36, 36), (20, 64), (64, 24), (30, 50)]
    for k, ((h, w), (mode, ext)) in enumerate(zip(sizes * 2, MODES.items())):
        rel = f"img/m{k}_{mode.replace(';', '_')}.{ext}"
        write_image(os.path.join(root, rel), h=h, w=w, mode=mode, seed=seed + k)
        add_img(rel, k % 3)
    write_bytes(os.path.join(root, "img/empty.jpg"), b"")
    add_img("img/empty.jpg", 0, "empty_file")
    write_bytes(os.path.join(root, "img/text.png"), b"this is a text file, not an image\n" * 10)
    add_img("img/text.png", 1, "not_media")
    write_image(os.path.join(root, "img/full.png"), h=60, w=80, seed=seed + 99)
    truncate(os.path.join(root, "img/full.png"), os.path.join(root, "img/trunc.png"), 0.4)
    os.remove(os.path.join(root, "img/full.png"))
    add_img("img/trunc.png", 2, "corrupt")
    write_image(os.path.join(root, "img/bomb.png"), h=3000, w=3000, mode="1", seed=seed)
    add_img("img/bomb.png", 0, "too_large")  # with max_image_pixels below 9e6
    add_img("img/missing.jpg", 1, "missing_file")
    write_image(os.path.join(os.path.dirname(os.path.abspath(root)), "outside.png"), seed=seed)
    add_img("../outside.png", 1, "path_outside_root")
    write_image(os.path.join(root, "img/badlabel.png"), seed=seed + 5)
    add_img("img/badlabel.png", 7, "label_out_of_range")  # with num_classes: 3
    write_image(os.path.join(root, "img/nolabel.png"), seed=seed + 6)
    add_img("img/nolabel.png", "", "bad_label")

    def add_vid(rel: str, label: int, cause: str | None = None) -> None:
        vid_lines.append(f"{rel} {label}")
        if cause is None:
            good[rel] = label
        else:
            bad[rel] = cause

    specs = [("v0.mp4", 24, 48, 64, "libx264"), ("v1.mp4", 40, 64, 48, "libx264"), ("v2.mp4", 5, 32, 80, "libx264"),
             ("v3.webm", 16, 48, 48, "libvpx-vp9"), ("v4.avi", 20, 40, 72, "mpeg4")]
    for k, (name, n, h, w, codec) in enumerate(specs):
        write_video(os.path.join(root, "vid", name), frames=n, h=h, w=w, codec=codec)
        add_vid(f"vid/{name}", k % 3)
    write_bytes(os.path.join(root, "vid/empty.mp4"), b"")
    add_vid("vid/empty.mp4", 0, "empty_file")
    write_bytes(os.path.join(root, "vid/text.mp4"), b"not a video at all\n" * 50)
    add_vid("vid/text.mp4", 1, "not_media")
    write_video(os.path.join(root, "vid/full.mp4"), frames=30)
    truncate(os.path.join(root, "vid/full.mp4"), os.path.join(root, "vid/trunc.mp4"), 0.5)
    os.remove(os.path.join(root, "vid/full.mp4"))
    add_vid("vid/trunc.mp4", 2, "corrupt")
    write_audio_only(os.path.join(root, "vid/audio.mp4"))
    add_vid("vid/audio.mp4", 0, "no_video_stream")
    add_vid("vid/missing.mp4", 1, "missing_file")

    images, videos = os.path.join(root, "images.txt"), os.path.join(root, "videos.txt")
    with open(images, "w") as f:
        f.write("\n".join(img_lines) + "\n")
    with open(videos, "w") as f:
        f.write("\n".join(vid_lines) + "\n")
    return {"images": images, "videos": videos, "good": good, "bad": bad, "num_classes": 3}
