"""Training with DeepSpeed: ``deepspeed tools/train.py --config configs/X.yaml`` (docs/training.md).

Files: ``main.py`` (setup, top to bottom), ``loop.py`` (the step loop), ``engine.py`` (everything
DeepSpeed), ``curriculum.py`` (coarse-to-fine schedules, registry CURRICULA), ``schedule.py`` (learning
rate), ``loss.py`` (global-mean loss), ``checkpoint.py`` (markers, RNG, retention), ``ema.py``,
``metrics.py`` (JSONL, TensorBoard, tqdm), ``export.py`` (safetensors), ``synthetic.py`` (an in-memory
dataset with the loader interface), ``data.py`` (chooses the loader). Importing this package imports
neither DeepSpeed nor the data pipeline.
"""

from mmvit.train import curriculum as curriculum  # registers the built-in curricula
