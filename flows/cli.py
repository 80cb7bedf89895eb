"""The `pld` command: subcommand -> pydantic config -> flow (or a plain library call)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

# Prefect reads these at import: no telemetry (no internet here) and patience with the
# temporary local server on small machines. A user's own settings win.
for _name, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_EXTRA_LOGGERS": "pld_pipeline,storage",
}.items():
    os.environ.setdefault(_name, _value)


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config file")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="dotted overrides applied after the file, e.g. views.num_views=4 k=20",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pld", description="Offline logit-cache distillation with Plackett-Luce Distillation."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    cache = sub.add_parser("cache", help="run the teacher once and fill the logit cache")
    _add_config_args(cache)
    cache.add_argument("--dask-workers", type=int, help="run shards on a local Dask cluster of N workers")
    cache.add_argument("--dask-address", help="run shards on an existing Dask scheduler (tcp://host:8786)")
    cache.add_argument("--overwrite", action="store_true", help="replace an existing cache at output")

    inspect = sub.add_parser("inspect", help="summarise a cache")
    inspect.add_argument("path", help="cache path or fsspec URL")

    train = sub.add_parser("train", help="train one student from the cache")
    _add_config_args(train)

    sweep = sub.add_parser("sweep", help="train one student per grid point from the cache")
    _add_config_args(sweep)
    sweep.add_argument("--max-parallel", type=int, help="student runs at once")

    demo = sub.add_parser("demo", help="the whole pipeline on Fashion-MNIST, on CPU")
    demo.add_argument("--quick", action="store_true", help="a few-minute version (what the tests run)")
    demo.add_argument("--workdir", help="where everything is written (default ./workdir)")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="dotted DemoConfig overrides")

    serve = sub.add_parser("serve", help="serve the flows as deployments (UI forms, schedules)")
    serve.add_argument(
        "--schedules", help="YAML mapping deployment name -> {cron, parameters, paused, tags, trigger}"
    )
    serve.add_argument(
        "--gpu-limit", default="gpu",
        help="global concurrency limit CUDA work holds a slot of (created when missing)",
    )  # fmt: skip
    serve.add_argument(
        "--gpu-slots", type=int,
        help="slots of that limit (default: this machine's GPUs, at least 1; an existing "
        "limit keeps its slots unless this is given)",
    )  # fmt: skip
    _add_report_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "distributed", "urllib3"):  # per-request chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from pld_pipeline.errors import PLDError
    from storage import CacheError

    try:
        return _dispatch(args)
    except (PLDError, CacheError) as exc:
        print(f"pld {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    from pld_pipeline.configs.loading import load_config

    if args.command == "report":
        return _report(args)
    if args.command == "inspect":
        from storage import inspect

        print(inspect(args.path))
        return 0
    if args.command == "cache":
        from flows.cache_teacher import cache_teacher
        from pld_pipeline.configs.cache import CacheConfig

        overrides = list(args.overrides)
        if args.dask_address:
            overrides += ["task_runner=dask", f"dask_address={args.dask_address}"]
        elif args.dask_workers is not None:
            overrides += ["task_runner=dask", f"dask_workers={args.dask_workers}"]
        if args.overwrite:
            overrides.append("overwrite=true")
        cache_teacher(load_config(CacheConfig, args.config, overrides))
        return 0
    if args.command == "train":
        from flows.train_student import train_student
        from pld_pipeline.configs.train import TrainConfig

        train_student(load_config(TrainConfig, args.config, args.overrides))
        return 0
    if args.command == "sweep":
        from flows.sweep import sweep
        from pld_pipeline.configs.train import SweepConfig

        overrides = list(args.overrides)
        if args.max_parallel is not None:
            overrides.append(f"max_parallel={args.max_parallel}")
        sweep(load_config(SweepConfig, args.config, overrides))
        return 0
    if args.command == "demo":
        from flows.demo import DemoConfig, demo

        overrides = list(args.overrides)
        if args.workdir:
            overrides.append(f"workdir={args.workdir}")
        base = DemoConfig.quick_defaults() if args.quick else {}
        demo(load_config(DemoConfig, None, overrides, base=base))
        return 0
    if args.command == "serve":
        from flows.deployments import serve_all

        serve_all(args.schedules, gpu_limit=args.gpu_limit, gpu_slots=args.gpu_slots)
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _add_report_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report", help="seed-aggregated results of one or several sweeps, side by side"
    )
    report.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="sweep_dir of a finished sweep")
    report.add_argument(
        "--baseline", metavar="GRID_POINT",
        help="one sweep: compare every grid point with this one (e.g. loss.name=kd); default: the best",
    )  # fmt: skip


def _report(args: argparse.Namespace) -> int:
    """Print the sweeps' summary tables; no Prefect, no training (reads summary.json)."""
    from pld_pipeline.seed_summary import read_summary
    from pld_pipeline.sweep_compare import report_text

    summaries = [read_summary(path) for path in args.sweep_dirs]
    print(report_text(summaries, args.sweep_dirs, baseline=args.baseline))
    return 0


if __name__ == "__main__":
    sys.exit(main())
