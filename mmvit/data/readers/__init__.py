"""Media readers: images through Pillow, videos through decord or PyAV (optionally in a child process)."""

from mmvit.data.readers.image import decode_image, probe_image, read_image
from mmvit.data.readers.video import VideoDecoder, read_video, resolve_backend

__all__ = ["VideoDecoder", "decode_image", "probe_image", "read_image", "read_video", "resolve_backend"]
