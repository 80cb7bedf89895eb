"""The `pld` command: subcommand -> pydantic config -> the run's own checks -> flow.

A config error is found before torch or Prefect loads; the checks that follow are the
first half of the run itself (`cache_build.check_pass`, `inputs.check_run`), whose
results the flow then uses, so a dataset is listed once per command. A user's error ends
as one `pld <cmd>: error: ...` line with exit status 2 (`--verbose`: with its traceback);
an unexpected error keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flows import console
from flows.prefect_env import apply_prefect_defaults

apply_prefect_defaults()  # before anything imports Prefect

# Subcommands that run a flow: their config's dotted overrides from each flag.
FLAG_OVERRIDES = {
    "dask_address": lambda v: ["task_runner=dask", f"dask_address={v}"],
    "dask_workers": lambda v: ["task_runner=dask", f"dask_workers={v}"],
    "overwrite": lambda v: ["overwrite=true"] if v else [],
    "max_parallel": lambda v: [f"max_parallel={v}"],
    "workdir": lambda v: [f"workdir={v}"],
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pld", description="Offline logit-cache distillation with Plackett-Luce Distillation."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    overrides = {"nargs": "*", "metavar": "key=value",
                 "help": "dotted overrides applied after the file, e.g. views.num_views=4 k=20"}  # fmt: skip

    cache = sub.add_parser("cache", help="run the teacher once and fill the logit cache")
    cache.add_argument("--config", required=True, help="YAML config file")
    cache.add_argument("overrides", **overrides)
    runner = cache.add_mutually_exclusive_group()
    runner.add_argument("--dask-workers", type=int, help="run shards on a local Dask cluster of N workers")  # fmt: skip
    runner.add_argument("--dask-address", help="run shards on an existing Dask scheduler (tcp://host:8786)")  # fmt: skip
    cache.add_argument("--overwrite", action="store_true", help="replace an existing cache at output")  # fmt: skip

    sub.add_parser("inspect", help="summarise a cache").add_argument("path", help="cache path or fsspec URL")  # fmt: skip

    train = sub.add_parser("train", help="train one student from the cache")
    train.add_argument("--config", required=True, help="YAML config file")
    train.add_argument("overrides", **overrides)

    sweep = sub.add_parser("sweep", help="train one student per grid point from the cache")
    sweep.add_argument("--config", required=True, help="YAML config file")
    sweep.add_argument("overrides", **overrides)
    sweep.add_argument("--max-parallel", type=int, help="student runs at once")

    demo = sub.add_parser("demo", help="the whole pipeline on Fashion-MNIST, on CPU")
    demo.add_argument("--quick", action="store_true", help="a few-minute version (what the tests run)")  # fmt: skip
    demo.add_argument("--workdir", help="where everything is written (default ./workdir)")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="dotted DemoConfig overrides")  # fmt: skip

    report = sub.add_parser("report", help="seed-aggregated results of one or several sweeps, side by side")  # fmt: skip
    report.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="sweep_dir of a finished sweep")  # fmt: skip
    report.add_argument(
        "--baseline", metavar="GRID_POINT",
        help="one sweep: compare every grid point with this one (e.g. loss.name=kd); default: the best",
    )  # fmt: skip

    serve = sub.add_parser("serve", help="serve the flows as deployments (UI forms, schedules)")
    serve.add_argument("--schedules", help="YAML mapping deployment name -> {cron, parameters, paused, tags, trigger}")  # fmt: skip
    serve.add_argument("--gpu-limit", default="gpu", help="global concurrency limit CUDA work holds a slot of (created when missing)")  # fmt: skip
    serve.add_argument(
        "--gpu-slots", type=int,
        help="slots of that limit (default: this machine's GPUs, at least 1; an existing "
        "limit keeps its slots unless this is given)",
    )  # fmt: skip
    for command in sub.choices.values():
        command.add_argument(
            "-v", "--verbose", action="store_true",
            help="show tracebacks on the terminal (Prefect's logs and UI always keep them)",
        )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.configure_logging(args.verbose)
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print(f"pld {args.command}: interrupted", file=sys.stderr, flush=True)
        console.quiet_terminal()
        return 130
    except Exception as exc:
        if not console.is_user_error(exc):
            raise  # a bug, not a user's mistake: keep its traceback
        console.report_error(args.command, exc, args.verbose)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "inspect":
        from storage import inspect

        print(inspect(args.path))
        return 0
    if args.command == "report":
        from pld_pipeline.reports.seed_summary import read_summary
        from pld_pipeline.reports.sweep_compare import report_text

        summaries = [read_summary(path) for path in args.sweep_dirs]
        print(report_text(summaries, args.sweep_dirs, baseline=args.baseline))
        return 0
    if args.command == "serve":
        from flows.deployments import serve_all

        if not args.verbose:
            console.hide_tracebacks()
        serve_all(args.schedules, gpu_limit=args.gpu_limit, gpu_slots=args.gpu_slots)
        return 0
    flow, config = _checked_run(args)
    _run(flow, config, args.verbose)
    return 0


def _run(flow, config, verbose: bool) -> None:  # noqa: ANN001 - a Prefect flow, its config
    """Start the flow; Prefect's terminal handlers (set up on its import) lose tracebacks."""
    if not verbose:
        console.hide_tracebacks()
    flow(config)


def _checked_run(args: argparse.Namespace) -> tuple[object, object]:
    """The command's flow and config, after the checks that are the first half of its run.

    The config is read with pydantic alone; the checks then load zarr and torch.
    """
    from pld_pipeline.configs.loading import load_config

    overrides = list(args.overrides)
    for flag, make in FLAG_OVERRIDES.items():
        if getattr(args, flag, None) not in (None, False):
            overrides += make(getattr(args, flag))
    if args.command == "cache":
        from pld_pipeline.configs.cache import CacheConfig, resolve_output
        from pld_pipeline.datasets import split_folder

        config = load_config(CacheConfig, args.config, overrides)
        # The flow puts the run's scheduled date into `{date}`: for a run started now, today.
        dated = config.model_copy(update={"output": resolve_output(config.output, None)})
        split_folder(dated.dataset_root, dated.split)  # a wrong path: found before torch loads
        from pld_pipeline.teacher import cache_build

        cache_build.keep(cache_build.check_pass(dated))
        from flows.cache_teacher import cache_teacher as flow
    elif args.command in ("train", "sweep"):
        from pld_pipeline.configs.train import SweepConfig, TrainConfig

        model = TrainConfig if args.command == "train" else SweepConfig
        config = load_config(model, args.config, overrides)
        from pld_pipeline.student.run import inputs  # after the config: it loads zarr

        if args.command == "train":
            inputs.check_train_run(config)
            from flows.train_student import train_student as flow
        else:
            inputs.check_sweep(config)
            from flows.sweep import sweep as flow
    else:  # demo
        from pld_pipeline.configs.demo import DemoConfig
        from pld_pipeline.demo import preflight

        base = DemoConfig.quick_defaults() if args.quick else {}
        config = load_config(DemoConfig, None, overrides, base=base)
        preflight.check_demo(config)
        from flows.demo import demo as flow
    return flow, config


if __name__ == "__main__":
    sys.exit(main())
