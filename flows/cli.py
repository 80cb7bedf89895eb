"""The `pld` command: subcommand -> pydantic config -> the run's own checks -> flow.

A config error is found before torch or Prefect loads (`configs.command_line`); the checks
that follow are the first half of the run itself (`cache_build.check_pass`,
`inputs.check_run`), whose results the flow then uses, so a dataset is listed once per
command. A user's error ends as one `pld <cmd>: error: ...` line with exit status 2
(`--verbose`: with its traceback); an unexpected error keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from flows._prefect_env import apply_prefect_defaults
from pld_pipeline import console

apply_prefect_defaults()  # before anything imports Prefect


def main(argv: Sequence[str] | None = None) -> int:
    from pld_pipeline.configs.command_line import build_parser

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
    elif args.command == "report":
        from pld_pipeline.reports.seed_summary import read_summary
        from pld_pipeline.reports.sweep_compare import report_text

        summaries = [read_summary(path) for path in args.sweep_dirs]
        print(report_text(summaries, args.sweep_dirs, baseline=args.baseline))
    elif args.command == "serve":
        from flows.deployments import serve_all

        if not args.verbose:
            console.hide_tracebacks()
        serve_all(args.schedules, gpu_limit=args.gpu_limit, gpu_slots=args.gpu_slots)
    else:
        from pld_pipeline.configs.command_line import config_of

        config = config_of(args)
        _run(_checked_flow(args.command, config), config, args.verbose)
    return 0


def _checked_flow(command: str, config: object):  # noqa: ANN202 - a Prefect flow
    """The command's flow, after the checks that are the first half of its run; what they
    checked waits in this process for the flow (zarr and torch load here)."""
    if command == "cache":
        from pld_pipeline.configs.cache import resolve_output
        from pld_pipeline.datasets import split_folder

        # The flow puts the run's scheduled date into `{date}`: for a run started now, today.
        dated = config.model_copy(update={"output": resolve_output(config.output, None)})
        split_folder(dated.dataset_root, dated.split)  # a wrong path: found before torch loads
        from pld_pipeline.teacher import cache_build

        cache_build.keep(cache_build.check_pass(dated))
        from flows.cache_teacher import cache_teacher

        return cache_teacher
    if command == "demo":
        from pld_pipeline.demo import preflight

        preflight.check_demo(config)
        from flows.demo import demo

        return demo
    from pld_pipeline.student.run import inputs

    if command == "train":
        inputs.check_train_run(config)
        from flows.train_student import train_student

        return train_student
    inputs.check_sweep(config)
    from flows.sweep import sweep

    return sweep


def _run(flow, config, verbose: bool) -> None:  # noqa: ANN001 - a Prefect flow, its config
    """Start the flow; Prefect's terminal handlers (set up on its import) lose tracebacks."""
    if not verbose:
        console.hide_tracebacks()
    flow(config)


if __name__ == "__main__":
    sys.exit(main())
