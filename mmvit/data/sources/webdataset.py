"""``webdataset`` source: tar shards of ``KEY.jpg|png|webp|mp4|webm|avi`` + ``KEY.cls`` + ``KEY.json``.

Shards are written by tools/make_shards.py (``webdataset.ShardWriter``), which keeps the original encoded
bytes and a JSON sidecar (width, height, frames, fps) so that packing is planned without decoding.

Splitting: with at least as many shards as slots (ranks x workers), slot ``s`` reads shards ``s, s + S,
...`` of the cycle's shard order (shuffled per cycle in training). With fewer shards, the ``k`` slots that
share a shard take every ``k``-th sample of it. Either way each sample belongs to one slot (exactly once in
evaluation). Training streams are endless (resampled by cycles), so every rank gets the same number of
batches; ``num_samples`` (or the index file written by make_shards.py) sizes an epoch.

Reading: shards are read with Python's ``tarfile`` in stream mode, skipping past corrupt headers
(``ignore_zeros``) and detecting the skipped gap from member offsets, and checking that the archive ends
with its zero blocks, so that a damaged member or a truncated shard is reported and counted
(``corrupt_tar``) while every intact sample of the shard is still delivered. URLs are opened with
``webdataset.gopen``; ``pipe:`` URLs (shell commands) are refused unless ``allow_pipe_urls`` is set.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from mmvit.data.classes import OUT_OF_RANGE, read_classes
from mmvit.data.errors import BadSample
from mmvit.data.readers import deadline
from mmvit.data.readers.deadline import DeadlineReader, ReadTimeout
from mmvit.data.rng import Purpose, rng
from mmvit.data.sources.base import Item, Source, SourceContext, Stream, ViewsConfig
from mmvit.registry import DATASETS

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
VIDEO_EXTS = ("mp4", "webm", "avi", "mkv", "mov", "m4v")
_TAIL = 1 << 16  # bytes of the stream end kept to check the end-of-archive blocks


def is_pipe(url: str) -> bool:
    return url.strip().startswith("pipe:")


def check_url(url: str, allow_pipe: bool) -> None:
    """Refuse ``pipe:`` URLs (they run a shell command), also after ``GOPEN_REWRITE`` rewriting."""
    rewritten = url
    if "GOPEN_REWRITE" in os.environ:
        from webdataset.gopen import rewrite_url

        try:
            rewritten = rewrite_url(url)
        except ValueError:
            rewritten = url
    if not allow_pipe and (is_pipe(url) or is_pipe(rewritten)):
        raise ValueError(f"webdataset URL {url!r} runs a shell command (pipe:); refused. Set data.allow_pipe_urls: "
                         f"true only for configs you trust")


def expand_urls(urls: str | list[str]) -> list[str]:
    """Brace expansion (``shard-{000..009}.tar``) of one pattern or a list of them."""
    import braceexpand

    patterns = [urls] if isinstance(urls, str) else list(urls)
    out: list[str] = []
    for p in patterns:
        out.extend(braceexpand.braceexpand(p))
    return out


def _open(url: str):
    if "://" not in url and not is_pipe(url):
        return open(url, "rb")
    if url.startswith("file://"):
        return open(url[len("file://"):], "rb")
    from webdataset.gopen import gopen

    return gopen(url, "rb")


class _Recorder:
    """A read-only file wrapper that counts bytes and keeps the last ``_TAIL`` or more of them."""

    def __init__(self, f):
        self.f, self.pos, self.tail = f, 0, bytearray()

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.pos += len(data)
        self.tail += data
        if len(self.tail) > 2 * _TAIL:
            del self.tail[:-_TAIL]
        return data

    def since(self, offset: int) -> bytes | None:
        """The bytes from ``offset`` to what was read so far, or ``None`` if they are no longer kept."""
        start = self.pos - len(self.tail)
        return bytes(self.tail[offset - start:]) if offset >= start else None

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


class _Chain:
    """``prefix`` then the rest of ``f``: a tar stream restarted in the middle of a shard."""

    def __init__(self, prefix: bytes, f):
        self.prefix, self.f = prefix, f

    def read(self, n: int = -1) -> bytes:
        if self.prefix:
            if n < 0:
                out, self.prefix = self.prefix + self.f.read(), b""
                return out
            out, self.prefix = self.prefix[:n], self.prefix[n:]
            return out if len(out) == n else out + self.f.read(n - len(out))
        return self.f.read(n)


def _padded(size: int) -> int:
    return (size + 511) // 512 * 512


def iter_tar(fileobj) -> Iterator[tuple[str, Any, Any]]:
    """``("file", name, bytes)`` for each regular member, ``("error", detail, None)`` for each damaged region.

    Damage: a gap between one member's end and the next header (a corrupt header skipped by
    ``ignore_zeros``), a header tarfile refuses (the stream is restarted one block later and skips blocks
    up to the next valid header), or an archive that does not end in zero blocks (truncated).
    """
    rec = _Recorder(fileobj)
    source: Any = rec
    base = 0            # shard offset of byte 0 of the current tar stream
    expected = 0        # shard offset where the next header should start
    resyncing = False   # looking for the next valid header after damage already reported
    for _ in range(10_000):  # restarts per shard
        try:
            with tarfile.open(fileobj=source, mode="r|*", ignore_zeros=True) as tf:
                for ti in tf:
                    start = base + ti.offset
                    if start != expected and not resyncing:
                        yield "error", f"unreadable tar data at bytes {expected}..{start} (corrupt header)", None
                    resyncing = False
                    data = tf.extractfile(ti).read() if ti.isreg() else None
                    if data is not None and len(data) != ti.size:
                        raise tarfile.ReadError(f"member {ti.name} truncated ({len(data)} of {ti.size} bytes)")
                    expected = base + ti.offset_data + _padded(ti.size)
                    if data is not None:
                        yield "file", ti.name, data
            break
        except (tarfile.TarError, OSError, EOFError, ValueError) as e:
            if not resyncing:
                yield "error", f"{type(e).__name__}: {e} (after byte {expected})", None
            # Restart one block further; stop when those bytes are no longer at hand (or at the end).
            restart = (base if resyncing else expected) + 512
            prefix = rec.since(restart) if restart <= rec.pos else None
            if prefix is None:
                return
            source, base, resyncing = _Chain(prefix, rec), restart, True
    else:
        return
    if resyncing:
        return  # the damage ran to the end of the shard and has been reported
    rec.drain()
    rest = rec.pos - expected  # bytes after the last member: must be the end-of-archive zero blocks
    tail = rec.since(expected) or b""
    if rest < 1024 or tail.strip(b"\x00"):
        yield "error", f"archive does not end in zero blocks after byte {expected} of {rec.pos} (truncated?)", None


def _key_ext(name: str) -> tuple[str | None, str | None]:
    from webdataset.tariterators import base_plus_ext

    return base_plus_ext(name)


def read_shard(url: str, labeler: Labeler | None = None, timeout_s: float | None = None) -> Iterator[Item]:
    """The samples of one shard, in order; damage comes as items with ``error`` set (``corrupt_tar``).

    Damage is attributed to the sample next to it: a sample that lost its media to it (the one before, or
    the one after) is reported as one ``corrupt_tar``; damage next to intact samples is reported on its own.
    With ``timeout_s``, opening the shard and every read get that limit (``mmvit.data.readers.deadline``):
    a stalled file or network read ends the shard with a ``timeout`` item instead of hanging the worker.
    """
    try:
        f = deadline.call(_open, url, timeout_s=timeout_s, name=url, what="opening the shard")
    except ReadTimeout as e:
        yield _error_item(url, e.detail, "timeout")
        return
    except Exception as e:  # noqa: BLE001  (any failure to open a shard: missing file, network, bad scheme)
        yield _error_item(url, f"cannot open: {type(e).__name__}: {e}")
        return
    if timeout_s is not None:
        f = DeadlineReader(f, timeout_s, url)
    try:
        yield from _read_members(url, f, labeler)
    except ReadTimeout as e:
        yield _error_item(url, e.detail, "timeout")
    finally:
        f.close()


def _read_members(url: str, f, labeler: Labeler | None) -> Iterator[Item]:
    """The samples of an open shard (see :func:`read_shard`)."""
    group: dict[str, Any] | None = None
    pending: str | None = None  # damage not yet attributed to a sample
    for what, name, data in iter_tar(f):
        if what == "error":
            pending = pending or name
            continue
        key, ext = _key_ext(name)
        if key is None or os.path.basename(key).startswith("__"):
            continue
        if group is None or group["__key__"] != key:
            if group is not None:
                if pending is not None and not _has_media(group):
                    group.setdefault("__damage__", pending)  # the damage took this sample's media
                    pending = None
                yield from _finish(url, group, labeler)
            group = {"__key__": key}
        if pending is not None:
            group.setdefault("__damage__", pending)
            pending = None
        group[ext.lower()] = data
    if pending is not None:
        if group is not None:
            group.setdefault("__damage__", pending)
        else:
            yield _error_item(url, pending)
    if group is not None:
        yield from _finish(url, group, labeler)


def _has_media(group: dict[str, Any]) -> bool:
    return any(e in group for e in (*IMAGE_EXTS, *VIDEO_EXTS))


def _error_item(url: str, detail: str, cause: str = "corrupt_tar") -> Item:
    return Item(kind="image", path=url, id=url, label=None, error=BadSample(cause, url, detail))


def _finish(url: str, group: dict[str, Any], labeler: Labeler | None) -> Iterator[Item]:
    damage = group.pop("__damage__", None)
    item = _to_item(url, group, labeler or integer_label)
    if damage is not None:
        if item.error is None:  # intact despite the damage next to it
            yield _error_item(url, damage)
        else:
            item.error = BadSample("corrupt_tar", item.path, damage)
    yield item


Labeler = Callable[[str, str], tuple[int | None, BadSample | None]]


def integer_label(raw: str, path: str) -> tuple[int | None, BadSample | None]:
    """A ``.cls`` text as an integer label (no class table at hand)."""
    try:
        return int(raw), None
    except ValueError:
        return None, BadSample("bad_label", path, f"label {raw!r} is not an integer and no class table maps names")


def _to_item(url: str, sample: dict[str, Any], labeler: Labeler) -> Item:
    key = sample["__key__"]
    path = f"{url}#{key}"
    media = next((e for e in (*IMAGE_EXTS, *VIDEO_EXTS) if e in sample), None)
    if media is None:
        return Item(kind="image", path=path, id=key, label=None,
                    error=BadSample("not_media", path, f"no media member among {sorted(sample)[1:]}"))
    kind = "image" if media in IMAGE_EXTS else "video"
    item = Item(kind=kind, path=path, id=key, label=None, data=sample[media])
    raw = sample.get("cls")
    try:
        text = raw.decode("utf-8").strip() if raw is not None else ""
    except UnicodeDecodeError:
        text = ""
    if not text:
        item.error = BadSample("bad_label", path, "missing or unreadable .cls member")
    else:
        item.label, item.error = labeler(text, path)
    if "json" in sample:
        try:
            info = json.loads(sample["json"])
            if all(isinstance(info.get(k), (int, float)) and info[k] > 0 for k in ("width", "height")):
                item.info = {**info, "width": int(info["width"]), "height": int(info["height"]),
                             "frames": int(info.get("frames") or 1), "fps": float(info.get("fps") or 0.0)}
        except (ValueError, TypeError, AttributeError):
            pass  # a broken sidecar only costs a probe
    return item


@DATASETS.register("webdataset")
class WebDataset(Source):
    """Tar shards, local or remote.

    Args:
        urls: a brace pattern (``data/train-{000000..000009}.tar``) or a list of URLs/patterns.
        index: the JSON index written by tools/make_shards.py (shards and sample count); instead of ``urls``.
        weight: sampling weight when mixed with other sources (training).
        num_samples: samples in all shards (sizes a training epoch; taken from ``index`` when given).
        views: evaluation views of the videos (see ``ViewsConfig``).
    """

    has_views = True

    def __init__(self, urls: str | list[str] | None = None, index: str | None = None, weight: float = 1.0,
                 num_samples: int | None = None, views: dict | None = None, classes: list[str] | str | None = None,
                 name: str | None = None, *, ctx: SourceContext | None = None):
        if (urls is None) == (index is None):
            raise ValueError("webdataset: give exactly one of urls and index")
        declared = None
        if index is not None:
            with open(index) as f:
                meta = json.load(f)
            base = os.path.dirname(os.path.abspath(index))
            urls = [u if ("://" in u or os.path.isabs(u) or is_pipe(u)) else os.path.join(base, u)
                    for u in meta["shards"]]
            num_samples = num_samples if num_samples is not None else meta.get("num_samples")
            declared = meta.get("classes")
        self.urls = expand_urls(urls)
        if not self.urls:
            raise ValueError(f"webdataset: no shards in {urls!r}")
        for u in self.urls:
            check_url(u, (ctx or SourceContext()).allow_pipe_urls)
        if weight <= 0:
            raise ValueError(f"webdataset: weight must be positive, got {weight}")
        self.weight = float(weight)
        self.read_timeout_s = (ctx or SourceContext()).read_timeout_s
        self.num_samples = num_samples
        self.views = ViewsConfig.parse(views)
        self.name = name or (index or (urls if isinstance(urls, str) else self.urls[0]))
        # The index file of tools/make_shards.py records the class order of the list it was made from.
        self._declared = read_classes(classes) if classes is not None else declared

    def declared_classes(self) -> list[str] | None:
        return None if self._declared is None else list(self._declared)

    def encode_label(self, raw: str, path: str) -> tuple[int | None, BadSample | None]:
        """A ``.cls`` text through the bound class table (names or integers)."""
        if self.table is None:
            return integer_label(raw, path)
        code = int(self.table.encode([raw])[0])
        if code >= 0:
            return code, None
        if code == OUT_OF_RANGE:
            return None, BadSample("label_out_of_range", path, f"label {raw} not in [0, {len(self.table)}) "
                                   f"(task {self.table.task!r})")
        return None, BadSample("unknown_class", path, f"class {raw!r} is not in the class table of task "
                               f"{self.table.task!r} ({self.table.origin})")

    def num_items(self) -> int | None:
        return self.num_samples

    def stream(self, slot: int, num_slots: int, seed: int, sid: int, train: bool) -> Stream:
        return ShardStream(self, slot, num_slots, seed, sid, train)


class ShardStream(Stream):
    """One slot's samples; position = (cycle, shard number within the slot's list, sample ordinal)."""

    def __init__(self, source: WebDataset, slot: int, num_slots: int, seed: int, sid: int, train: bool):
        self.source, self.slot, self.num_slots = source, slot, num_slots
        self.seed, self.sid, self.train = seed, sid, train
        self.cycle, self.shard, self.ordinal = 0, 0, 0
        self._it: Iterator[Item] | None = None
        self._it_at: tuple[int, int] | None = None  # (cycle, shard) the open iterator reads
        self._read = 0  # samples consumed from the open iterator
        self._relaxed = False

    def _plan(self, cycle: int) -> tuple[list[str], int, int]:
        """(shards of this slot, stride k, offset) for a cycle: keep samples with ordinal % k == offset."""
        urls = self.source.urls
        n, s = len(urls), self.num_slots
        order = (rng(Purpose.SHARD_ORDER, self.seed, self.sid, cycle).permutation(n) if self.train
                 else np.arange(n))
        if n >= s:
            return [urls[i] for i in order[self.slot::s]], 1, 0
        shard = self.slot % n
        sharing = len(range(shard, s, n))
        return [urls[order[shard]]], sharing, self.slot // n

    def _open_iter(self) -> None:
        shards, _, _ = self._plan(self.cycle)
        if self._it is not None:
            self._it.close()
        self._it = read_shard(shards[self.shard], self.source.encode_label, self.source.read_timeout_s)
        self._it_at, self._read = (self.cycle, self.shard), 0

    def next(self) -> Item | None:
        empty = 0  # shards in a row that gave this slot nothing: a whole cycle of them ends the stream
        while True:
            shards, stride, offset = self._plan(self.cycle)
            if self.shard >= len(shards):
                if not self.train:
                    return None
                if empty >= len(shards):
                    if stride == 1 or self._relaxed:
                        return None
                    # A tiny shard shared by more slots than it has samples: share samples rather than starve.
                    self._relaxed = True
                self.cycle, self.shard, self.ordinal = self.cycle + 1, 0, 0
                continue
            if self._it is None or self._it_at != (self.cycle, self.shard) or self._read != self.ordinal:
                self._open_iter()
                for _ in range(self.ordinal):  # resume inside a shard: skip what was read before
                    if next(self._it, None) is None:
                        break
                self._read = self.ordinal
            item = next(self._it, None)
            if item is None:
                empty += 1
                self.shard, self.ordinal = self.shard + 1, 0
                continue
            ordinal = self.ordinal
            self.ordinal += 1
            self._read += 1
            if ordinal % stride == offset or self._relaxed:
                return item

    def position(self) -> dict[str, Any]:
        return {"cycle": self.cycle, "shard": self.shard, "ordinal": self.ordinal, "relaxed": self._relaxed}

    def seek(self, position: dict[str, Any]) -> None:
        self.cycle, self.shard, self.ordinal = int(position["cycle"]), int(position["shard"]), int(position["ordinal"])
        self._relaxed = bool(position.get("relaxed", False))

    def close(self) -> None:
        if self._it is not None:
            self._it.close()
            self._it = None
