"""Attentive, linear and k-NN probes on frozen encoders: top-1 per kind (images, videos) and task.

    python tools/probe.py --checkpoint mae=runs/pretrain_demo/mae --checkpoint random=random:runs/pretrain_demo/mae \
        --probe attentive linear knn --labels-fraction 0.1 --out runs/pretrain_demo/probe

Writes results.json (one row per encoder, probe, kind, task and level) and results.md; see docs/pretraining.md.
The logic lives in mmvit/eval/probe_run.py and mmvit/eval/features.py.
"""

from mmvit.eval.probe_cli import probe_main

if __name__ == "__main__":
    probe_main()
