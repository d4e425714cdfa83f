"""Training with DeepSpeed: ``deepspeed tools/train.py --config configs/X.yaml`` (docs/training.md).

Files: ``main.py`` (setup, top to bottom), ``loop.py`` (the step loop), ``engine.py`` (the only door to
DeepSpeed), ``curriculum.py`` (coarse-to-fine schedules, registry CURRICULA), ``schedule.py`` (learning
rate), ``loss.py`` (global-mean loss), ``validate.py`` (periodic evaluation through mmvit.eval), ``rng.py``
(seeding and saved RNG states), ``ema.py``, ``runlog.py`` (JSONL, TensorBoard, logging, tqdm), ``faults.py``
(fault injection for tests), ``export.py`` (final weights). Objectives live in mmvit/objectives, checkpoint
files in mmvit/checkpoint.py. Importing this package does not import DeepSpeed.
"""

from mmvit.train import curriculum as curriculum  # registers the built-in curricula
