"""Command line: ``python -m storage.inspect PATH`` prints a cache's summary."""

from __future__ import annotations

import argparse
import sys

from storage.errors import CacheError
from storage.summary import inspect


def main(argv: list[str] | None = None) -> int:
    """Print ``inspect(PATH)``; exit status 1 with the error message on a bad cache."""
    parser = argparse.ArgumentParser(prog="python -m storage.inspect", description=__doc__)
    parser.add_argument("path", help="cache directory or fsspec URL")
    args = parser.parse_args(argv)
    try:
        text = inspect(args.path)
    except CacheError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
