"""Train with DeepSpeed (docs/training.md).

    deepspeed [--num_gpus N | --hostfile H] tools/train.py --config configs/X.yaml [--set key=value ...]
    deepspeed tools/train.py --config configs/X.yaml --deepspeed_config ds.json   # DeepSpeed's own flag
    python tools/train.py --config configs/X.yaml                                  # one process
    ... --resume auto                                                              # newest complete checkpoint
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mmvit.train.main import main

if __name__ == "__main__":
    sys.exit(main())
