"""The `pld` command line: its subcommands and flags, and the config each one reads.

Plain argparse and pydantic, so a config mistake is one clear error before torch or
Prefect loads; `flows/cli.py` runs what the config describes. Flags are shorthands for
dotted overrides of the config (`--dask-workers 4` is `task_runner=dask dask_workers=4`).
"""

from __future__ import annotations

import argparse
from typing import Any

from pld_pipeline.configs.loading import load_config

OVERRIDES_HELP = "dotted overrides applied after the file, e.g. views.num_views=4 k=20"
FLAG_OVERRIDES = {
    "dask_address": lambda v: ["task_runner=dask", f"dask_address={v}"],
    "dask_workers": lambda v: ["task_runner=dask", f"dask_workers={v}"],
    "overwrite": lambda v: ["overwrite=true"] if v else [],
    "max_parallel": lambda v: [f"max_parallel={v}"],
    "workdir": lambda v: [f"workdir={v}"],
}


def build_parser() -> argparse.ArgumentParser:
    """The `pld` parser: cache, inspect, train, sweep, demo, report, serve."""
    parser = argparse.ArgumentParser(
        prog="pld", description="Offline logit-cache distillation with Plackett-Luce Distillation."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    with_config = {}
    for name, text in (("cache", "run the teacher once and fill the logit cache"),
                       ("train", "train one student from the cache"),
                       ("sweep", "train one student per grid point from the cache")):  # fmt: skip
        with_config[name] = sub.add_parser(name, help=text)
        with_config[name].add_argument("--config", required=True, help="YAML config file")
        with_config[name].add_argument("overrides", nargs="*", metavar="key=value", help=OVERRIDES_HELP)  # fmt: skip
    runner = with_config["cache"].add_mutually_exclusive_group()
    runner.add_argument("--dask-workers", type=int, help="run shards on a local Dask cluster of N workers")  # fmt: skip
    runner.add_argument("--dask-address", help="run shards on an existing Dask scheduler (tcp://host:8786)")  # fmt: skip
    with_config["cache"].add_argument("--overwrite", action="store_true", help="replace an existing cache at output")  # fmt: skip
    with_config["sweep"].add_argument("--max-parallel", type=int, help="student runs at once")
    sub.add_parser("inspect", help="summarise a cache").add_argument("path", help="cache path or fsspec URL")  # fmt: skip

    demo = sub.add_parser("demo", help="the whole pipeline on Fashion-MNIST, on CPU")
    demo.add_argument("--quick", action="store_true", help="a few-minute version (what the tests run)")  # fmt: skip
    demo.add_argument("--workdir", help="where everything is written (default ./workdir)")
    demo.add_argument("--config", help="YAML DemoConfig file (e.g. examples/demo.yaml)")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="dotted DemoConfig overrides")  # fmt: skip

    report = sub.add_parser("report", help="seed-aggregated results of one or several sweeps, side by side")  # fmt: skip
    report.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="sweep_dir of a finished sweep")  # fmt: skip
    report.add_argument("--baseline", metavar="GRID_POINT", help="one sweep: compare every grid point with this one (e.g. loss.name=kd); default: the best")  # fmt: skip

    serve = sub.add_parser("serve", help="serve the flows as deployments (UI forms, schedules)")
    serve.add_argument("--schedules", help="YAML mapping deployment name -> {cron, parameters, paused, tags, trigger}")  # fmt: skip
    serve.add_argument("--gpu-limit", default="gpu", help="global concurrency limit CUDA work holds a slot of (created when missing)")  # fmt: skip
    serve.add_argument("--gpu-slots", type=int, help="slots of that limit (default: this machine's GPUs, at least 1; an existing limit keeps its slots unless this is given)")  # fmt: skip
    for command in sub.choices.values():
        command.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on the terminal (Prefect's logs and UI always keep them)")  # fmt: skip
    return parser


def config_of(args: argparse.Namespace) -> Any:
    """The config a cache, train, sweep or demo command runs: its file (the demo: its
    defaults) with the flags' and the command line's overrides.

    Raises:
        ConfigError: an unreadable file, an unknown field or an invalid value.
    """
    overrides = list(args.overrides)
    for flag, make in FLAG_OVERRIDES.items():
        if getattr(args, flag, None) not in (None, False):
            overrides += make(getattr(args, flag))
    if args.command == "demo":
        from pld_pipeline.configs.demo import DemoConfig  # noqa: PLC0415

        base = DemoConfig.quick_defaults() if args.quick else {}
        return load_config(DemoConfig, args.config, overrides, base=base)
    if args.command == "cache":
        from pld_pipeline.configs.cache import CacheConfig as model  # noqa: PLC0415, N813
    elif args.command == "train":
        from pld_pipeline.configs.train import TrainConfig as model  # noqa: PLC0415, N813
    else:
        from pld_pipeline.configs.train import SweepConfig as model  # noqa: PLC0415, N813
    return load_config(model, args.config, overrides)
