"""Which size to ask a video decoder for, so that a crop is scaled during the RGB conversion.

A decoder cannot crop, but it can scale the whole frame while converting it to RGB (swscale), which is far
cheaper than converting at full size and resizing the crop in torch afterwards. The loader plans a crop
``box`` on the probed frame and a ``target`` size for it; :func:`decode_plan` returns the smallest decode
size at which the box still covers the target on each axis, and where the box lies in that decoded frame.
Each axis is scaled on its own (the box is resized to the target per axis anyway), and only down: an axis
whose box is already smaller than its target is decoded at native size and upscaled by the caller.
Decoded lengths are rounded up to even numbers (below the native length), because PyAV scales 4:2:0 video
to even sizes several times faster (see ``backends._ToRGB``).

On a scaled axis the box in the decoded frame has exactly the target length, so the caller's resize is a
no-op there (``to_sample`` skips interpolation when the crop already has the planned size): the scaled box
is between ``target`` and ``target + 2`` pixels long, and the at most 2 pixels of rounding are left out.
Its position is the scaled box's centre, rounded to the nearest pixel, shifted to stay inside the frame.

:func:`shared_decode_plan` does the same for several views of one video decoded in one pass
(``VideoDecoder.read_views``): one size, the largest any view needs, and each view's box in it.
"""

from __future__ import annotations

from collections.abc import Sequence

Box = tuple[int, int, int, int]  # (top, left, height, width) in pixels


def _axis_size(full: int, length: int, target: int) -> int:
    """Smallest even decoded length ``d <= full`` with ``length * d / full >= target`` (``full`` itself when
    that is the only one); ``full`` when the box is not longer than the target (no upscaling)."""
    if target >= length:
        return full
    d = max(1, -(-(target * full) // length))  # ceil(target * full / length), exact in integers
    return d + 1 if d % 2 and d < full else d


def _axis_box(full: int, decoded: int, start: int, length: int, target: int | None) -> tuple[int, int]:
    """``(start, length)`` in the decoded axis, centred on the scaled box.

    The length is ``target`` when the scaled box is between ``target`` and ``target + 2`` pixels long (what
    _axis_size plans: at most 2 pixels, one from rounding up and one from rounding to even, are left out),
    else the scaled length floored to whole pixels.
    """
    scaled = length * decoded  # the box's length in decoded pixels, times full (exact in integers)
    if target is not None and target * full <= scaled < (target + 2) * full:
        out = target
    else:
        out = scaled // full
    out = max(1, min(decoded, out))
    # Centre of the scaled box, rounded: (2 * start * decoded + length * decoded - out * full) / (2 * full).
    first = (2 * start * decoded + scaled - out * full + full) // (2 * full)
    return max(0, min(decoded - out, first)), out


def _check(frame_hw: Sequence[int], box: Sequence[int]) -> None:
    h, w = int(frame_hw[0]), int(frame_hw[1])
    top, left, bh, bw = (int(v) for v in box)
    if h < 1 or w < 1 or bh < 1 or bw < 1 or top < 0 or left < 0 or top + bh > h or left + bw > w:
        raise ValueError(f"box {tuple(box)} is not inside a {h}x{w} frame")


def box_in_decoded(frame_hw: Sequence[int], decoded_hw: Sequence[int], box: Sequence[int],
                   target_hw: Sequence[int] | None = None) -> Box:
    """Where ``box`` (planned on a ``frame_hw`` frame) lies in the frame decoded at ``decoded_hw``; with
    ``target_hw``, an axis whose scaled box is within 2 pixels above its target gets exactly the target."""
    _check(frame_hw, box)
    if not (1 <= int(decoded_hw[0]) <= int(frame_hw[0]) and 1 <= int(decoded_hw[1]) <= int(frame_hw[1])):
        raise ValueError(f"decoded size {tuple(decoded_hw)} is not a downscale of {tuple(frame_hw)}")
    th, tw = (None, None) if target_hw is None else (int(target_hw[0]), int(target_hw[1]))
    top, h = _axis_box(int(frame_hw[0]), int(decoded_hw[0]), int(box[0]), int(box[2]), th)
    left, w = _axis_box(int(frame_hw[1]), int(decoded_hw[1]), int(box[1]), int(box[3]), tw)
    return top, left, h, w


def decode_plan(frame_hw: Sequence[int], box: Sequence[int], target_hw: Sequence[int]) -> tuple[tuple[int, int], Box]:
    """``(decode_hw, box_in_decoded)`` for one crop.

    Args:
        frame_hw: the probed ``(H, W)`` of the video.
        box: ``(top, left, h, w)`` of the crop in that frame.
        target_hw: ``(th, tw)`` the crop is resized to.

    Returns:
        ``decode_hw``: the full-frame size to pass as ``size=`` to ``VideoDecoder.read`` (``frame_hw`` itself
        when no axis is downscaled); ``box_in_decoded``: the crop in the decoded frame, inside it, of length
        ``th`` (``tw``) on each downscaled axis and ``h`` (``w``) on the others.
    """
    _check(frame_hw, box)
    if int(target_hw[0]) < 1 or int(target_hw[1]) < 1:
        raise ValueError(f"target size must be positive, got {tuple(target_hw)}")
    decoded = (_axis_size(int(frame_hw[0]), int(box[2]), int(target_hw[0])),
               _axis_size(int(frame_hw[1]), int(box[3]), int(target_hw[1])))
    return decoded, box_in_decoded(frame_hw, decoded, box, target_hw)


def shared_decode_plan(frame_hw: Sequence[int], boxes: Sequence[Sequence[int]],
                       targets: Sequence[Sequence[int]]) -> tuple[tuple[int, int], list[Box]]:
    """One decode size for several crops of the same frames (the largest each axis needs) and each crop's
    box in the frame decoded at that size (longer than its target where another view needed more pixels)."""
    if len(boxes) != len(targets) or not boxes:
        raise ValueError(f"need one target per box, got {len(boxes)} boxes and {len(targets)} targets")
    sizes = [decode_plan(frame_hw, b, t)[0] for b, t in zip(boxes, targets)]
    decoded = (max(s[0] for s in sizes), max(s[1] for s in sizes))
    return decoded, [box_in_decoded(frame_hw, decoded, b, t) for b, t in zip(boxes, targets)]
