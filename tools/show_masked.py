"""Input, masked input and MAE reconstruction of a few images and video frames of a split, as one PNG.

    python tools/show_masked.py runs/pretrain_demo/mae --data-config configs/demo/demo.yaml --split test \
        --out docs/examples/mae_reconstruction.png

See docs/pretraining.md; the logic lives in mmvit/eval/reconstruct.py.
"""

from mmvit.eval.reconstruct import main

if __name__ == "__main__":
    main()
