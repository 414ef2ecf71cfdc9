"""CoOp/Dassl-compatible entry point: ``python train.py --trainer TaIDPT ...`` (see --help)."""
import sys

from taidpt.cli.train import build_parser, cfg_from_args, main

__all__ = ["build_parser", "cfg_from_args", "main"]

if __name__ == "__main__":
    sys.exit(main())
