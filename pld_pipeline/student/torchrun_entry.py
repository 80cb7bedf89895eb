"""The torchrun entry of one student trained with DDP (kept out of ddp.py: train imports ddp).

    torchrun --standalone --nproc_per_node 4 -m pld_pipeline.student.torchrun_entry \
        --config train.yaml [key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from pld_pipeline.configs.loading import load_config
from pld_pipeline.configs.train import TrainConfig
from pld_pipeline.student.run.ddp import init_from_env, shutdown
from pld_pipeline.student.run.train import fit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pld_pipeline.student.torchrun_entry",
        description="Train one student with DDP; start it with torchrun --nproc_per_node N.",
    )
    parser.add_argument("--config", required=True, help="TrainConfig as YAML or JSON")
    parser.add_argument(
        "--backend", choices=["nccl", "gloo"], help="default: nccl with CUDA, else gloo"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted TrainConfig overrides"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """torchrun entry: read the config, join the group, fit, leave the group."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s rank{os.environ.get('RANK', 0)} %(levelname)s %(name)s: %(message)s",
    )
    config = load_config(TrainConfig, args.config, args.overrides)
    ctx = init_from_env(args.backend)
    try:
        fit(config, dist_context=ctx)
    finally:
        shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
