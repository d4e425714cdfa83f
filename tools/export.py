"""Export a DeepSpeed checkpoint (any ZeRO stage) as model.safetensors + config.yaml.

    python tools/export.py runs/demo --out exported/demo
    python -c "import mmvit; m = mmvit.build_model(mmvit.load_config('exported/demo/config.yaml'),
               weights='exported/demo/model.safetensors')"

The logic lives in mmvit/export.py.
"""

from __future__ import annotations

import argparse
import logging

from mmvit.export import export


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("checkpoint", help="a run dir (newest complete checkpoint), engine.save_checkpoint's save_dir "
                                           "or a tag directory")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tag", default=None, help="checkpoint tag instead of the 'latest' one")
    parser.add_argument("--config", default=None, help="config file, instead of the one saved with the run")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--online", action="store_true",
                        help="JEPA: export the context encoder (the one the optimizer trains) instead of the target "
                             "encoder (its EMA, the default, as V-JEPA evaluates)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = export(args.checkpoint, args.out, tag=args.tag, config=args.config, dtype=args.dtype,
                    online=args.online)
    print(f"wrote {result.weights} and {result.config} from {result.checkpoint} "
          f"(ZeRO stage {result.zero_stage}, config from {result.config_source})")


if __name__ == "__main__":
    main()
