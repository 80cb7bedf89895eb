"""The `pld` command: subcommand -> pydantic config -> preflight checks -> flow.

Config, dataset, cache, weights and temperature/K errors are found before a flow run (and
Prefect's server) starts: reading a config imports no torch and no Prefect, and the
library's preflight checks run next. A user's error ends as one `pld <cmd>: error: ...`
line with exit status 2 (`--verbose`: with its traceback); an unexpected error keeps its
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flows import console
from flows.prefect_env import apply_prefect_defaults

apply_prefect_defaults()  # before anything imports Prefect


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config file")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="dotted overrides applied after the file, e.g. views.num_views=4 k=20",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pld", description="Offline logit-cache distillation with Plackett-Luce Distillation."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    cache = sub.add_parser("cache", help="run the teacher once and fill the logit cache")
    _add_config_args(cache)
    cache.add_argument(
        "--dask-workers", type=int, help="run shards on a local Dask cluster of N workers"
    )
    cache.add_argument(
        "--dask-address", help="run shards on an existing Dask scheduler (tcp://host:8786)"
    )
    cache.add_argument(
        "--overwrite", action="store_true", help="replace an existing cache at output"
    )

    inspect = sub.add_parser("inspect", help="summarise a cache")
    inspect.add_argument("path", help="cache path or fsspec URL")

    train = sub.add_parser("train", help="train one student from the cache")
    _add_config_args(train)

    sweep = sub.add_parser("sweep", help="train one student per grid point from the cache")
    _add_config_args(sweep)
    sweep.add_argument("--max-parallel", type=int, help="student runs at once")

    demo = sub.add_parser("demo", help="the whole pipeline on Fashion-MNIST, on CPU")
    demo.add_argument(
        "--quick", action="store_true", help="a few-minute version (what the tests run)"
    )
    demo.add_argument("--workdir", help="where everything is written (default ./workdir)")
    demo.add_argument("--config", help="YAML DemoConfig file (e.g. examples/demo.yaml)")
    demo.add_argument(
        "overrides", nargs="*", metavar="key=value", help="dotted DemoConfig overrides"
    )

    serve = sub.add_parser("serve", help="serve the flows as deployments (UI forms, schedules)")
    serve.add_argument(
        "--schedules",
        help="YAML mapping deployment name -> {cron, parameters, paused, tags, trigger}",
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
    for command in sub.choices.values():
        command.add_argument(
            "-v", "--verbose", action="store_true",
            help="show tracebacks on the terminal (Prefect's logs and UI always keep them)",
        )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.configure_logging(args.verbose)
    # A temporary Prefect server running already (main called in a test harness) is not ours.
    owns_server = not console.temporary_server_running()
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        if owns_server:
            console.stop_temporary_server()
        print(f"pld {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if not console.is_user_error(exc):
            raise  # a bug, not a user's mistake: keep its traceback
        console.report_error(args.command, exc, args.verbose, stop_server=owns_server)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    # Each command reads its config (pydantic only), runs the library's preflight checks,
    # and only then imports Prefect and starts the flow.
    from pld_pipeline.configs.loading import load_config

    if args.command == "report":
        return _report(args)
    if args.command == "inspect":
        from storage import inspect

        print(inspect(args.path))
        return 0
    if args.command == "cache":
        from flows.placeholders import resolve_output
        from pld_pipeline.configs.cache import CacheConfig

        overrides = list(args.overrides)
        if args.dask_address:
            overrides += ["task_runner=dask", f"dask_address={args.dask_address}"]
        elif args.dask_workers is not None:
            overrides += ["task_runner=dask", f"dask_workers={args.dask_workers}"]
        if args.overwrite:
            overrides.append("overwrite=true")
        config = load_config(CacheConfig, args.config, overrides)
        # The flow puts the run's scheduled date into `{date}`: for a run started now, today.
        dated = config.model_copy(update={"output": resolve_output(config.output, None)})
        from pld_pipeline.datasets import split_folder

        split_folder(dated.dataset_root, dated.split)  # a wrong path: found before torch loads
        from pld_pipeline.teacher import cache_build  # after the config: it loads torch

        cache_build.check_pass(dated)
        from flows.cache_teacher import cache_teacher

        _run(cache_teacher, config, args)
        return 0
    if args.command == "train":
        from pld_pipeline.configs.train import TrainConfig

        config = load_config(TrainConfig, args.config, args.overrides)
        from pld_pipeline.student.run import preflight  # after the config: it loads zarr

        preflight.check_train_run(config)
        from flows.train_student import train_student

        _run(train_student, config, args)
        return 0
    if args.command == "sweep":
        from pld_pipeline.configs.train import SweepConfig

        overrides = list(args.overrides)
        if args.max_parallel is not None:
            overrides.append(f"max_parallel={args.max_parallel}")
        config = load_config(SweepConfig, args.config, overrides)
        from pld_pipeline.student.run import preflight  # after the config: it loads zarr

        preflight.check_sweep(config)
        from flows.sweep import sweep

        _run(sweep, config, args)
        return 0
    if args.command == "demo":
        from pld_pipeline.configs.demo import DemoConfig

        overrides = list(args.overrides)
        if args.workdir:
            overrides.append(f"workdir={args.workdir}")
        base = DemoConfig.quick_defaults() if args.quick else {}
        config = load_config(DemoConfig, args.config, overrides, base=base)
        from pld_pipeline.demo import preflight  # after the config: it loads zarr

        preflight.check_demo(config)
        from flows.demo import demo

        _run(demo, config, args)
        return 0
    if args.command == "serve":
        from flows.deployments import serve_all

        if not args.verbose:
            console.hide_tracebacks()
        serve_all(args.schedules, gpu_limit=args.gpu_limit, gpu_slots=args.gpu_slots)
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _add_report_parser(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report", help="seed-aggregated results of one or several sweeps, side by side"
    )
    report.add_argument(
        "sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="sweep_dir of a finished sweep"
    )
    report.add_argument(
        "--baseline", metavar="GRID_POINT",
        help="one sweep: compare every grid point with this one (e.g. loss.name=kd); default: the best",
    )  # fmt: skip


def _report(args: argparse.Namespace) -> int:
    """Print the sweeps' summary tables; no Prefect, no training (reads summary.json)."""
    from pld_pipeline.reports.seed_summary import read_summary
    from pld_pipeline.reports.sweep_compare import report_text

    summaries = [read_summary(path) for path in args.sweep_dirs]
    print(report_text(summaries, args.sweep_dirs, baseline=args.baseline))
    return 0


def _run(flow, config, args: argparse.Namespace) -> None:  # noqa: ANN001 - a Prefect flow, its config
    """Start the flow; Prefect's terminal handlers (set up on its import) lose tracebacks."""
    if not args.verbose:
        console.hide_tracebacks()
    flow(config)


if __name__ == "__main__":
    sys.exit(main())
