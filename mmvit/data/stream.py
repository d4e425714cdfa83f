"""The packing iterable dataset: each DataLoader worker streams, decodes, patchifies and packs.

One worker, per batch:
1. fill its buffer to ``pack_buffer`` waiting examples: draw (draws.py), check the label, read the size
   (header, container probe, or JSON sidecar) -- no pixel decoding yet;
2. plan every waiting example for this batch's stage and patch size: crop, flip, size from the resolution
   distribution (``fit_to_budget``), token count, token-drop rate, all from an RNG keyed by
   ``(seed, slot, draw number)``, so a plan never depends on timing or on which batch it lands in;
3. choose, oldest first, the examples that pack into ``[batch_rows, seq_len]`` (packer.py); the others wait;
4. decode the chosen (bad ones are skipped and counted; the holes are refilled), resize, normalize, and
   ``mmvit.pack`` them with the planned drop rates into exactly ``[batch_rows, seq_len]``.

With ``data.cache_mb`` a training worker keeps decoded samples (and their sizes) in memory across passes
(cache.py): step 1 then reads the size and step 4 the pixels of a cached sample from memory.

With ``data.mask`` (masked pretraining) step 2 also plans each example's mask (its visible tokens, from the
same per-example RNG, so a batch is reproducible from the seed), step 3 chooses examples whose visible tokens
fill ``[batch_rows, seq_len]`` and whose full grids fill ``[full_batch_rows, full_seq_len]``
(``packer.select_masked``), and step 4 packs both with :func:`mmvit.pretrain.pack_masked` (``batch.full``).

Batches are numbered per rank; in training worker ``w`` builds batches ``i`` with ``i % num_workers`` equal
to its role, which is the order in which the DataLoader collects them, and stops at ``batches_per_epoch``
(every rank yields the same number). Each batch carries the worker's state after building it: where the
oldest waiting example was drawn and which draws still wait, so that the loader can resume exactly.
"""

from __future__ import annotations

import collections
import dataclasses
import zlib
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from mmvit.data.augment import random_resized_crop, scale_box, to_sample, view_box
from mmvit.data.cache import DecodedCache
from mmvit.data.config import DataConfig
from mmvit.data.control import SharedState
from mmvit.data.draws import Draw, Mixer
from mmvit.data.errors import BadSample, SkipCounter, TooManyBadSamples
from mmvit.data.frames import sample_frames
from mmvit.data.packer import select_examples, select_masked
from mmvit.data.readers.geometry import decode_plan, shared_decode_plan
from mmvit.data.readers.image import decode_image, probe_image
from mmvit.data.readers.video import VideoDecoder
from mmvit.data.rng import Purpose, rng
from mmvit.data.sources.base import Source
from mmvit.data.stage import Stage, make_stage, plan_tokens
from mmvit.packing import PackedBatch, PatchSize, pack
from mmvit.pretrain.masking import MaskConfig, mask_rng, plan_mask
from mmvit.pretrain.pack import pack_masked
from mmvit.token_drop import make_rate_fn, num_kept


_VIEW_CACHE = 8  # videos whose multi-view decode is being served (views of one video are drawn one after another)


@dataclasses.dataclass
class StreamBatch(PackedBatch):
    """A :class:`PackedBatch` with what the loader needs for stats and resuming (ignore it elsewhere)."""

    index: int = -1                   # batch number on this rank, over all epochs
    stage_id: int = 0                 # curriculum stage it was built with
    role: int = 0                     # worker role that built it
    worker_state: dict | None = None  # that worker's state after building it
    skip_counts: dict | None = None   # that worker's good/bad counts so far


@dataclasses.dataclass
class PassEnd:
    """The last thing an evaluation worker yields: its final counts, so that bad samples it met after its
    last batch are counted too (the loader records it and does not hand it out)."""

    role: int
    worker_state: dict
    skip_counts: dict


@dataclasses.dataclass
class Waiting:
    """A drawn example waiting in the buffer: its draw and its size, read without decoding pixels."""

    draw: Draw
    info: dict
    # The last plan made for it and its (stage, patch) key: a plan is a pure function of the example and that
    # key, and the buffer re-plans every waiting example for every batch (a quarter of a masked-pretraining
    # worker's time went there, mask planning included, before this cache).
    cached_plan: tuple | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass
class ExamplePlan:
    """How one waiting example goes into the next batch (all drawn from its own RNG, see ``_Worker.rng``)."""

    box: tuple[int, int, int, int]
    flip: bool
    size: tuple[int, int]
    frames: int      # frames decoded (1 for images)
    tokens: int      # before dropping
    kept: int        # after dropping
    rate: float
    frame_seed: int
    visible: torch.Tensor | None = None  # masked pretraining: sorted visible token indices (None: unmasked)


class _Worker:
    """The per-(rank, worker) state of one pass: draws, waiting buffer, skip counts."""

    def __init__(self, ds: PackedStream, role: int, num_workers: int):
        self.ds, self.cfg = ds, ds.cfg
        self.role = role
        self.slot = ds.rank * num_workers + role
        self.mixer = Mixer(ds.sources, self.slot, ds.world_size * num_workers, ds.seed, ds.train)
        self.counter = SkipCounter(self.cfg.max_bad_fraction, self.cfg.bad_fraction_min_samples,
                                   where=f"rank {ds.rank} worker {role}", record_paths=not ds.train)
        self.waiting: list[Waiting] = []
        self.full_lens: dict[int, int] = {}  # data.fit_full_rows: each stage's full row length (stage id -> L)
        # The last 4 x pack_buffer admissions, selected or still waiting: a sample of the stream as it comes in.
        self.recent: collections.deque = collections.deque(maxlen=4 * self.cfg.pack_buffer)
        self.exhausted = False
        self.bad_run = 0  # bad draws in a row: an endless stream of nothing but bad samples must end
        self.rate_fn = make_rate_fn(self.cfg.drop_rate) if ds.train else None
        self.mask = MaskConfig.from_dict(self.cfg.mask) if self.cfg.masked else None
        self.view_cache: collections.OrderedDict = collections.OrderedDict()  # multi-view decodes being served
        self.cache = ds.decoded_cache()  # data.cache_mb: decoded samples across passes (None: off)
        self.augment = self.cfg.augment

    # --- state ---------------------------------------------------------------------------------------------
    def state(self) -> dict:
        # With fit_full_rows the recent admissions are part of the state (a stage that begins after a resume
        # measures its full rows on them): the replay then starts at the oldest of them or of the waiting.
        held = self.waiting[:1] + ([self.recent[0]] if self.cfg.fit_full_rows and self.recent else [])
        replay = min(held, key=lambda w: w.draw.j).draw.pre if held else self.mixer.state()
        out = {"replay": replay, "waiting": [w.draw.j for w in self.waiting], "next_j": self.mixer.j,
               "exhausted": self.exhausted, "counts": self.counter.state()}
        if self.cfg.fit_full_rows:
            out["full_lens"] = sorted([k, v] for k, v in self.full_lens.items())
            out["recent"] = [w.draw.j for w in self.recent]
        return out

    def load(self, state: dict | None) -> None:
        if not state:
            return
        self.mixer.seek(state["replay"])
        waiting, recent = set(state["waiting"]), set(state.get("recent", []))
        while self.mixer.j < state["next_j"]:  # replay the draws, keep the ones still waiting (and recent)
            draw = self.mixer.next()
            if draw is None:
                break
            if draw.j in waiting or draw.j in recent:
                self._admit(draw, wait=draw.j in waiting)
        self.recent = collections.deque((w for w in self.recent if w.draw.j in recent), maxlen=self.recent.maxlen)
        self.exhausted = bool(state.get("exhausted", False))
        self.counter.load(state.get("counts"))  # the counts as they were (the replay counted again)
        self.full_lens = {int(k): int(v) for k, v in state.get("full_lens", [])}

    # --- buffer --------------------------------------------------------------------------------------------
    def _fail(self, err: BadSample, draw: Draw, admitted: bool) -> None:
        # Evaluation views of one sample share its Item: the sample is counted once, its other views dropped.
        if draw.item.failed:
            return
        draw.item.failed = True
        self.counter.skip(err, counted_ok=admitted)

    def _admit(self, draw: Draw, wait: bool = True) -> None:
        """Check and probe a draw; it joins the waiting buffer (``wait``) and the recent admissions."""
        item = draw.item
        if item.failed:
            return
        try:
            if item.error is not None:
                raise item.error
            source = self.ds.sources[draw.sid]
            if item.label is None and source.labelled:
                raise BadSample("bad_label", item.path, "no label")
            table = source.table
            if item.label is not None and (item.label < 0 or (table is not None and item.label >= len(table))):
                n_cls = len(table) if table is not None else "?"
                raise BadSample("label_out_of_range", item.path, f"label {item.label} not in [0, {n_cls})"
                                f"{f' (task {table.task!r})' if table is not None else ''}")
            info = item.info or (self.cache.info(self.cache_key(draw)) if self.cache is not None else None) \
                or self._probe(item)
        except BadSample as e:
            self._fail(e, draw, admitted=False)
            self.bad_run += 1
            if self.bad_run > 10_000:
                raise TooManyBadSamples(f"10000 bad samples in a row; {self.counter.summary()}") from None
            return
        self.bad_run = 0
        if draw.view <= 0:  # a sample counts once, not once per evaluation view
            self.counter.ok()
        admitted = Waiting(draw, info)
        if wait:
            self.waiting.append(admitted)
        self.recent.append(admitted)

    @staticmethod
    def cache_key(draw: Draw) -> tuple:
        return draw.sid, draw.item.id

    def cacheable(self, w: Waiting) -> bool:
        """Whether ``data.cache_mb`` is on and the sample's decoded pixels (every frame of a video, at its
        native size) are small enough to be cached; others are read as without a cache, and never counted as
        cache misses."""
        info = w.info
        frames = int(info["frames"]) if w.draw.item.kind == "video" else 1
        return self.cache is not None and self.cache.fits(frames * int(info["height"]) * int(info["width"]) * 3)

    def _probe(self, item) -> dict:
        if item.kind == "image":
            return probe_image(item.src, item.path, self.cfg.max_image_pixels, timeout_s=self.cfg.decode_timeout_s)
        return self.ds.decoder().probe(item.src, item.path, key=item.path)

    def refill(self) -> None:
        while len(self.waiting) < self.cfg.pack_buffer and not self.exhausted:
            draw = self.mixer.next()
            if draw is None:
                self.exhausted = True
                break
            self._admit(draw)

    # --- planning ------------------------------------------------------------------------------------------
    def rng(self, w: Waiting) -> np.random.Generator:
        """Per-example randomness. Evaluation keys it by the example's identity, so that its size does not
        depend on how examples are spread over ranks and workers."""
        if self.ds.train:
            return rng(Purpose.EXAMPLE, self.ds.seed, self.slot, w.draw.j)
        ident = zlib.crc32(f"{w.draw.sid}/{w.draw.item.id}/{w.draw.view}".encode())
        return rng(Purpose.EXAMPLE, self.ds.seed, ident)

    def plan(self, w: Waiting, stage: Stage, patch: PatchSize) -> ExamplePlan:
        key = (stage, patch)
        if w.cached_plan is not None and w.cached_plan[0] == key:
            return w.cached_plan[1]
        plan = self._plan(w, stage, patch)
        w.cached_plan = (key, plan)
        return plan

    def _plan(self, w: Waiting, stage: Stage, patch: PatchSize) -> ExamplePlan:
        cfg, train = self.cfg, self.ds.train
        item = w.draw.item
        r = self.rng(w)
        h, w_ = int(w.info["height"]), int(w.info["width"])
        views = self.ds.sources[w.draw.sid].views
        if train and self.augment.crop:
            box = random_resized_crop(h, w_, self.augment.crop_scale, self.augment.crop_ratio, r)
        else:
            _, spatial = views.decode(max(w.draw.view, 0), item.kind)
            box = view_box(h, w_, spatial, views.spatial)
        flip = bool(train and r.random() < self.augment.flip)
        value = stage.resolution.draw(r)
        frame_seed = int(r.integers(2**62))
        size, frames, tokens = plan_tokens(stage, video=item.kind == "video", box_hw=(box[2], box[3]), value=value,
                                           patch=patch, token_cap=cfg.token_cap)
        rate, kept = 0.0, tokens
        if self.rate_fn is not None:
            gen = torch.Generator().manual_seed(int(r.integers(2**62)))
            rate = float(self.rate_fn(tokens, gen))
            kept = num_kept(tokens, rate)
        visible = None
        if self.mask is not None:
            # Drawn last, so the other draws are those of the unmasked plan.
            seed = int(r.integers(2**62))
            if tokens >= 2:  # a single token cannot be split into visible and masked (next_batch skips it)
                grid = (tokens // ((size[0] // patch[1]) * (size[1] // patch[2])), size[0] // patch[1],
                        size[1] // patch[2])
                visible = plan_mask(grid, item.kind, self.mask, mask_rng(seed))
                kept = int(visible.numel())
        return ExamplePlan(box, flip, size, frames, tokens, kept, rate, frame_seed, visible)

    # --- decoding ------------------------------------------------------------------------------------------
    def frame_indices(self, w: Waiting, plan: ExamplePlan, t_view: int) -> tuple[list[int], int]:
        views = self.ds.sources[w.draw.sid].views
        return sample_frames(int(w.info["frames"]), plan.frames, sampling=self.cfg.sampling,
                             interval=self.cfg.frame_interval, train=self.ds.train,
                             rng=np.random.default_rng(plan.frame_seed), view=t_view, num_views=views.temporal)

    def video_frames(self, w: Waiting, plan: ExamplePlan, indices: list[int], stage: Stage,
                     patch: PatchSize) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """A clip's frames, decoded at the smallest size its crop needs (the decoder scales while converting
        to RGB), and the crop box in them. In multi-view evaluation the first view of a video decodes the
        frames of all its views in one pass; the others are served from that decode. With ``data.cache_mb``
        (training) a clip that fits is decoded whole at its native size once and its frames cut from the cache."""
        item, info = w.draw.item, w.info
        hw = (int(info["height"]), int(info["width"]))
        source = self.ds.sources[w.draw.sid]
        frames = source.load(item, indices)
        if frames is not None:
            return frames, scale_box(plan.box, hw, frames.shape[1:3])
        n_views = source.views.count("video")
        if self.cacheable(w):
            clip = self.cached_clip(w)
            if clip is not None:
                return clip[indices], scale_box(plan.box, hw, clip.shape[1:3])
        if self.ds.train or n_views == 1:
            size, box = decode_plan(hw, plan.box, plan.size)
            frames = self.ds.decoder().read(item.src, item.path, indices, info, size=size)
            return frames, scale_box(box, size, frames.shape[1:3])  # guards against a sidecar that lied
        key = (w.draw.sid, item.id, stage, patch)
        if key not in self.view_cache:
            plans = [self.plan(Waiting(dataclasses.replace(w.draw, view=v), info), stage, patch)
                     for v in range(n_views)]
            per_view = [self.frame_indices(w, p, source.views.decode(v, "video")[0])[0] for v, p in enumerate(plans)]
            size, boxes = shared_decode_plan(hw, [p.box for p in plans], [p.size for p in plans])
            clips = self.ds.decoder().read_views(item.src, item.path, per_view, info, size=size)
            self.view_cache[key] = {v: (c, scale_box(b, size, c.shape[1:3]))
                                    for v, (c, b) in enumerate(zip(clips, boxes))}
            while len(self.view_cache) > _VIEW_CACHE:
                self.view_cache.popitem(last=False)
        views = self.view_cache[key]
        frames, box = views.pop(w.draw.view)  # each view is served once
        if not views:
            del self.view_cache[key]
        return frames, box

    def cached_clip(self, w: Waiting) -> np.ndarray | None:
        """Every frame of a (:meth:`cacheable`) video at its native size, from the cache or decoded whole into
        it; ``None`` if the whole decode fails (the video is then read as without a cache)."""
        key = self.cache_key(w.draw)
        clip = self.cache.get(key)
        if clip is not None:
            return clip
        try:
            clip = self.ds.decoder().read(w.draw.item.src, w.draw.item.path, list(range(int(w.info["frames"]))),
                                          w.info)
        except BadSample:
            return None  # e.g. a sidecar that over-counts frames: the frames this clip needs may still decode
        self.cache.put(key, w.info, clip)
        return clip

    def decode(self, w: Waiting, plan: ExamplePlan, stage: Stage, patch: PatchSize) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        item, info = w.draw.item, w.info
        source = self.ds.sources[w.draw.sid]
        t_view, s_view = source.views.decode(max(w.draw.view, 0), item.kind)
        meta: dict[str, Any] = {"path": item.path, "kind": item.kind, "id": item.id, "view": max(w.draw.view, 0),
                                "label": item.label, "source": source.name, "task": self.ds.task_of(w.draw.sid),
                                "orig_size": [int(info["height"]), int(info["width"])], "size": list(plan.size)}
        if item.kind == "image":
            frames = source.load(item, [0])
            cacheable = frames is None and self.cacheable(w)
            if cacheable:
                frames = self.cache.get(self.cache_key(w.draw))
            if frames is None:
                frames = decode_image(item.src, item.path, cfg.max_image_pixels, timeout_s=cfg.decode_timeout_s)[None]
                if cacheable:
                    self.cache.put(self.cache_key(w.draw), info, frames)
            box = scale_box(plan.box, (int(info["height"]), int(info["width"])), frames.shape[1:3])
        else:
            indices, repeated = self.frame_indices(w, plan, t_view)
            frames, box = self.video_frames(w, plan, indices, stage, patch)
            meta.update(video_id=item.id, frame_indices=indices, repeated_frames=repeated,
                        temporal_view=t_view, spatial_view=s_view)
        x = to_sample(frames, box, plan.flip, plan.size, cfg.mean, cfg.std, video=item.kind == "video")
        return x, meta

    # --- one batch -----------------------------------------------------------------------------------------
    def patch_for(self, g: int, stage: Stage) -> PatchSize:
        if stage.patch_size is not None:
            return stage.patch_size
        patches = self.cfg.patch_list()
        if not self.ds.train or len(patches) == 1:
            return patches[0]
        return patches[int(rng(Purpose.PATCH_SIZE, self.ds.seed, self.ds.rank, g).integers(len(patches)))]

    def next_batch(self, g: int, stage: Stage, stage_id: int) -> StreamBatch | None:
        cfg = self.cfg
        patch = self.patch_for(g, stage)
        chosen: list[tuple[Waiting, ExamplePlan, torch.Tensor, dict]] = []
        while True:
            self.refill()
            if not self.waiting:
                break
            plans = {w.draw.j: self.plan(w, stage, patch) for w in self.waiting}
            if self.mask is not None:
                keys = self._select_masked(plans, chosen, stage_id, stage, patch)
            else:
                keys = select_examples([(w.draw.j, plans[w.draw.j].kept) for w in self.waiting], cfg.seq_len,
                                       cfg.batch_rows, cfg.max_per_row, fixed=[c[1].kept for c in chosen])
            if not keys:
                break
            picked = set(keys)
            batch_waiting = [w for w in self.waiting if w.draw.j in picked]
            self.waiting = [w for w in self.waiting if w.draw.j not in picked]
            failed = False
            for w in batch_waiting:
                if w.draw.item.failed:
                    failed = True  # another view of this sample failed to decode
                    continue
                try:
                    x, meta = self.decode(w, plans[w.draw.j], stage, patch)
                except BadSample as e:
                    self._fail(e, w.draw, admitted=True)
                    failed = True
                    continue
                chosen.append((w, plans[w.draw.j], x, meta))
            if not failed:
                break  # the selection saw every waiting example: the batch is as full as it gets
        if not chosen:
            return None
        rates = [c[1].rate for c in chosen]
        drop = rates if any(r > 0 for r in rates) else None
        gen = torch.Generator().manual_seed(int(rng(Purpose.PACK, self.ds.seed, self.ds.rank, g).integers(2**62)))
        for c in chosen:
            c[3]["stage_id"] = stage_id
        labels = [-1 if c[0].draw.item.label is None else c[0].draw.item.label for c in chosen]
        tasks = [self.ds.tasks.index(c[3]["task"]) for c in chosen]
        if self.mask is not None:
            batch = pack_masked([c[2] for c in chosen], [c[1].visible for c in chosen], patch_size=patch,
                                seq_len=cfg.seq_len, num_rows=cfg.batch_rows, full_seq_len=self.full_len(stage_id),
                                full_rows=cfg.full_batch_rows, labels=labels, tasks=tasks,
                                meta=[c[3] for c in chosen], max_per_row=cfg.max_per_row)
        else:
            batch = pack([c[2] for c in chosen], patch_size=patch, seq_len=cfg.seq_len, max_per_row=cfg.max_per_row,
                         drop_rate=drop, generator=gen, labels=labels, tasks=tasks, meta=[c[3] for c in chosen],
                         num_rows=cfg.batch_rows)
        fields = {f.name: getattr(batch, f.name) for f in dataclasses.fields(PackedBatch)}
        return StreamBatch(**fields, index=g, stage_id=stage_id, role=self.role, worker_state=self.state(),
                           skip_counts=self.counter.state())

    def full_len(self, stage_id: int, plans: dict | None = None, stage: Stage | None = None,
                 patch: PatchSize | None = None) -> int:
        """The full rows' length in this stage: ``data.full_seq_len``, or with ``data.fit_full_rows`` the length
        that makes the two packings' capacities stand as the stage's visible and all tokens do.

        That ratio is measured once per stage, at its first batch, on the last ``4 * pack_buffer`` examples
        admitted (planned at this stage's sizes and masks, weighted per source as the stream mixes them), and
        kept in the worker's state, so the shape is fixed within the stage and a resumed run reproduces it. It
        is never below ``full_seq_len`` (examples are sized to fit that) nor above twice it (bounded memory).
        """
        cfg = self.cfg
        if not cfg.fit_full_rows:
            return int(cfg.full_seq_len)
        if stage_id not in self.full_lens:
            if plans is None or stage is None or patch is None:
                raise RuntimeError(f"stage {stage_id}: the full row length is measured at its first selection")
            # The recent admissions are the stream as it comes in. The waiting buffer is no such sample once
            # batches have been taken from it: it over-holds what the selection takes least readily (measured
            # on the demo's JEPA mix: full row lengths 260-388 from it at the stage changes). Per source, its
            # mean visible and all tokens, mixed by the sources' weights (the stream's expected mix), not by how
            # many of each the sample happens to hold.
            by_source: dict[int, list[tuple[int, int]]] = {}
            for w in self.recent:
                p = plans[w.draw.j] if w.draw.j in plans else self.plan(w, stage, patch)
                if p.visible is not None:
                    by_source.setdefault(w.draw.sid, []).append((p.kept, p.tokens))
            weights = self.mixer.weights
            kept = sum(weights[sid] * np.mean([k for k, _ in v]) for sid, v in by_source.items())
            tokens = sum(weights[sid] * np.mean([t for _, t in v]) for sid, v in by_source.items())
            length = cfg.full_seq_len
            if kept > 0 and tokens > 0:
                # capacities rows*seq_len : full_rows*L = kept : tokens  =>  L = rows*seq_len*tokens / (kept*full_rows)
                length = int(np.ceil(cfg.batch_rows * cfg.seq_len * tokens / (kept * cfg.full_batch_rows)))
            self.full_lens[stage_id] = int(min(max(length, cfg.full_seq_len), 2 * cfg.full_seq_len))
        return self.full_lens[stage_id]

    def _select_masked(self, plans: dict, chosen: list, stage_id: int, stage: Stage, patch: PatchSize) -> list:
        """Masked pretraining: skip (and count) examples that cannot be packed masked (a single token, or more
        visible tokens than an encoder row holds), then choose for both packings."""
        cfg = self.cfg
        for w in list(self.waiting):
            p = plans[w.draw.j]
            why = (f"{p.tokens} token at this size and patch: nothing to mask" if p.visible is None else
                   f"{p.kept} visible tokens, more than seq_len={cfg.seq_len} (raise seq_len or mask more)"
                   if p.kept > cfg.seq_len else None)
            if why is not None:
                self.waiting.remove(w)
                self._fail(BadSample("other", w.draw.item.path, why), w.draw, admitted=True)
        return select_masked([(w.draw.j, plans[w.draw.j].kept, plans[w.draw.j].tokens) for w in self.waiting],
                             cfg.seq_len, cfg.batch_rows, self.full_len(stage_id, plans, stage, patch),
                             cfg.full_batch_rows, cfg.max_per_row,
                             fixed=[(c[1].kept, c[1].tokens) for c in chosen])

    def close(self) -> None:
        self.mixer.close()


class PackedStream(IterableDataset):
    """Yields :class:`StreamBatch` es of exactly ``[batch_rows, seq_len]``; see the module docstring."""

    def __init__(self, cfg: DataConfig, sources: list[Source], shared: SharedState, *, rank: int, world_size: int,
                 seed: int, train: bool, batches_per_epoch: int | None, tasks: list[str] | None = None):
        super().__init__()
        self.tasks = list(tasks or ["default"])
        self.cfg, self.sources, self.shared = cfg, sources, shared
        self.rank, self.world_size, self.seed, self.train = rank, world_size, seed, train
        self.batches_per_epoch = batches_per_epoch
        self._decoder: VideoDecoder | None = None
        self._cache: DecodedCache | None = None
        self._stage_cache: dict[int, Stage] = {}

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_decoder"] = None
        state["_cache"] = None
        return state

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError("an evaluation stream has no fixed length")
        return self.batches_per_epoch

    def task_of(self, sid: int) -> str:
        """The task name of source ``sid`` (bound by the loader; the run's only task otherwise)."""
        return self.sources[sid].task or self.tasks[0]

    def decoder(self) -> VideoDecoder:
        """One video decoder per process (its probe cache and child process live across epochs)."""
        if self._decoder is None:
            self._decoder = VideoDecoder(self.cfg.video_backend, self.cfg.decode_threads, self.cfg.decode_timeout_s,
                                         self.cfg.decode_isolation)
        return self._decoder

    def decoded_cache(self) -> DecodedCache | None:
        """The process's cache of decoded training samples (``data.cache_mb``; kept across epochs), or None."""
        if self._cache is None and self.train and self.cfg.cache_mb > 0:
            self._cache = DecodedCache(self.cfg.cache_mb)
        return self._cache

    def stage(self, stage_id: int, spec: dict) -> Stage:
        if stage_id not in self._stage_cache:
            if len(self._stage_cache) > 64:
                self._stage_cache.clear()
            self._stage_cache[stage_id] = make_stage(self.cfg, spec)
        return self._stage_cache[stage_id]

    def __iter__(self):
        info = get_worker_info()
        num_workers, worker_id = (info.num_workers, info.id) if info is not None else (1, 0)
        restore = self.shared.restore.read() or {"i0": 0, "g0": 0, "states": {}}
        i0, g0 = int(restore["i0"]), int(restore["g0"])
        # The DataLoader asks worker 0 first: give it the role of batch i0 so batches come out in order.
        role = (worker_id + i0) % num_workers
        worker = _Worker(self, role, num_workers)
        worker.load(restore["states"].get(str(role)))
        i = i0 + (role - i0) % num_workers  # first batch index >= i0 of this role
        try:
            while self.batches_per_epoch is None or i < self.batches_per_epoch:
                g = g0 + (i - i0)
                stage_id, spec = self.shared.begin_batch(g)
                batch = worker.next_batch(g, self.stage(stage_id, spec), stage_id)
                if batch is None:
                    if self.train:
                        raise RuntimeError(f"rank {self.rank} worker {role}: the training sources gave no usable "
                                           f"sample; counts: {worker.counter.state()}")
                    break
                yield batch
                i += num_workers
            if not self.train:
                yield PassEnd(role, worker.state(), worker.counter.state())
        finally:
            worker.close()
