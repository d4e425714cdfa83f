"""Bad samples: one exception type, a fixed list of causes, and the per-worker skip accounting.

Real video datasets always contain broken files (missing, empty, truncated, not media at all). A broken
sample must never stop a worker or hang a run: it is skipped with a one-line reason naming the path and the
cause, and counted per cause. Only when more than ``max_bad_fraction`` of the samples seen are bad does the
run stop, with a summary, instead of quietly training on what is left.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("mmvit.data")

# Every skip reason. Readers, sources and the stream only ever raise these, so stats stay comparable.
CAUSES = (
    "missing_file",        # the path does not exist
    "empty_file",          # zero bytes
    "not_media",           # no known image/video format at all (a text file named .mp4)
    "corrupt",             # a known format that fails to open or decode (truncated image, broken header)
    "truncated",           # a video that holds fewer decodable frames than its container claims
    "no_video_stream",     # a container without a video stream (audio only)
    "bad_pixel_format",    # an image mode or pixel format that cannot be turned into RGB
    "too_large",           # more pixels than max_image_pixels (decompression bombs)
    "timeout",             # decoding ran past decode_timeout_s
    "decoder_crash",       # the isolated decoder process died (segfault in the codec library)
    "bad_label",           # a missing or unparseable label
    "label_out_of_range",  # an integer label outside [0, classes of its task)
    "unknown_class",       # a class name that is not in the class table of its task
    "path_outside_root",   # a list entry that escapes its root (../ or an absolute path elsewhere)
    "corrupt_tar",         # a webdataset shard that cannot be read on (bad tar header, unreadable URL)
    "other",               # anything else raised while reading one sample
)


class BadSample(Exception):
    """One sample cannot be used. ``cause`` is one of :data:`CAUSES`."""

    def __init__(self, cause: str, path: str, detail: str = ""):
        if cause not in CAUSES:
            cause, detail = "other", f"{cause}: {detail}"
        super().__init__(f"{cause}: {path}: {detail}" if detail else f"{cause}: {path}")
        self.cause, self.path, self.detail = cause, path, detail


class TooManyBadSamples(RuntimeError):
    """More than ``max_bad_fraction`` of the samples were bad. Takes one message string, so that the
    DataLoader can re-raise it in the main process with the worker's traceback."""


class TooManyStuckThreads(RuntimeError):
    """Several reads or decodes of one process ran past their time limit and never returned (their helper
    threads are still stuck in C code; see ``mmvit.data.readers.deadline``). Not a bad sample: the worker
    stops with this error rather than leak more threads. One message string, like TooManyBadSamples."""


def sniff(head: bytes) -> str | None:
    """The media family of a file from its first bytes: ``"image"``, ``"video"`` or ``None`` (unknown)."""
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "video"
    if head.startswith(b"\x1a\x45\xdf\xa3") or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    return None


def open_failure(head: bytes, path: str, exc: BaseException, expect: str) -> BadSample:
    """Classify a failure to open a file: the expected format (``"image"``/``"video"``) recognisable from
    its first bytes means corrupt, anything else not media."""
    if len(head) == 0:
        return BadSample("empty_file", path)
    cause = "corrupt" if sniff(head) == expect else "not_media"
    return BadSample(cause, path, f"{type(exc).__name__}: {exc}".strip()[:200])


class SkipCounter:
    """Counts good and bad samples of one worker, logs each skip on one line, enforces the bad fraction.

    Args:
        max_bad_fraction: stop once more than this fraction of the samples seen are bad.
        min_samples: the fraction is only enforced after this many samples (one early bad file out of one
            is not a broken dataset).
    """

    MAX_FAILURES = 10_000  # bad samples listed by path (evaluation and prediction report each one)

    def __init__(self, max_bad_fraction: float, min_samples: int = 50, where: str = "", record_paths: bool = False):
        self.max_bad_fraction = max_bad_fraction
        self.min_samples = min_samples
        self.where = where
        self.good = 0
        self.bad: Counter[str] = Counter()
        self.examples: dict[str, str] = {}  # first path per cause, for the summary
        self._logged: set[str] = set()       # paths already logged (training meets them again every cycle)
        self.record_paths = record_paths
        self.failures: list[list[str]] = []  # [path, cause, detail] of each bad sample (with record_paths)

    @property
    def total(self) -> int:
        return self.good + sum(self.bad.values())

    def ok(self, n: int = 1) -> None:
        self.good += n

    def skip(self, err: BadSample, counted_ok: bool = False) -> None:
        """Count a bad sample; ``counted_ok`` when it had been counted good (it passed the header check and
        failed only when decoded)."""
        if counted_ok:
            self.good -= 1
        self.bad[err.cause] += 1
        self.examples.setdefault(err.cause, err.path)
        if self.record_paths and len(self.failures) < self.MAX_FAILURES:
            self.failures.append([err.path, err.cause, err.detail])
        if err.path not in self._logged:
            if len(self._logged) < 100_000:
                self._logged.add(err.path)
            log.warning("skip %s: %s%s", err.path, err.cause, f" ({err.detail})" if err.detail else "")
        self.check()

    def check(self) -> None:
        n_bad = sum(self.bad.values())
        if self.total == 0 or self.total < self.min_samples:
            return
        if n_bad / self.total > self.max_bad_fraction:
            raise TooManyBadSamples(self.summary())

    def summary(self) -> str:
        n_bad = sum(self.bad.values())
        causes = ", ".join(f"{c}={n} (e.g. {self.examples[c]})" for c, n in self.bad.most_common())
        return (f"{n_bad} of {self.total} samples were bad{' in ' + self.where if self.where else ''}, "
                f"more than max_bad_fraction={self.max_bad_fraction}: {causes}. "
                f"Run tools/check_data.py on the config to list them all.")

    def state(self) -> dict:
        out = {"good": self.good, "bad": dict(self.bad), "examples": dict(self.examples)}
        if self.record_paths:
            out["failures"] = [list(f) for f in self.failures]
        return out

    def load(self, state: dict | None) -> None:
        state = state or {}
        self.good = int(state.get("good", 0))
        self.bad = Counter({k: int(v) for k, v in state.get("bad", {}).items()})
        self.examples = dict(state.get("examples", {}))
        self.failures = [list(f) for f in state.get("failures", [])]
