"""Named random streams of the data pipeline.

Every random choice the loader makes comes from a counter-based generator keyed by ``(seed, ..., stream)``,
so a choice depends only on the seed and on which draw it is, never on timing or on what else was drawn.
The purpose numbers keep independent choices apart; they are part of the data's identity (changing one
changes the examples a seed gives), so they are fixed here, once.
"""

from __future__ import annotations

import enum

import numpy as np


class Purpose(enum.IntEnum):
    SOURCE_PICK = 3      # which source a training draw reads (mixing by weight)
    EXAMPLE = 5          # an example's crop, flip, size and drop rate
    PERMUTATION = 7      # the order of an indexed source in one cycle
    SHARD_ORDER = 11     # the order of webdataset shards in one cycle
    PATCH_SIZE = 13      # the patch size of a training batch
    PACK = 17            # the token-drop permutations of one batch
    SYNTH_PALETTE = 19   # synthetic source: class colours
    SYNTH_ITEM = 23      # synthetic source: an item's kind, label and size
    SYNTH_PIXELS = 29    # synthetic source: a frame's noise


def rng(purpose: Purpose, *keys: int) -> np.random.Generator:
    """The generator of ``purpose`` for ``keys`` (seed first, then counters)."""
    return np.random.default_rng([*(int(k) for k in keys), int(purpose)])
