"""Media readers: images through Pillow, videos through decord or PyAV (optionally in a child process),
decode sizes for in-decoder scaling, and time limits for in-process work."""

from mmvit.data.readers.deadline import DeadlineReader, ReadTimeout
from mmvit.data.readers.geometry import box_in_decoded, decode_plan, shared_decode_plan
from mmvit.data.readers.image import decode_image, probe_image, read_image
from mmvit.data.readers.video import VideoDecoder, read_video, resolve_video_backend

__all__ = ["DeadlineReader", "ReadTimeout", "VideoDecoder", "box_in_decoded", "decode_image", "decode_plan",
           "probe_image", "read_image", "read_video", "resolve_video_backend", "shared_decode_plan"]
