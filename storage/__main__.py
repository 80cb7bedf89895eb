"""Command line: ``python -m storage PATH`` prints a cache's summary (``storage.inspect``).

The module is ``__main__`` rather than ``inspect`` so that no submodule shadows the
function ``storage.inspect``.
"""

from __future__ import annotations

import argparse
import sys

from storage.errors import CacheError
from storage.summary import inspect

PROG = "python -m storage"


def main(argv: list[str] | None = None) -> int:
    """Print ``inspect(PATH)``; on a bad cache, one ``error:`` line and exit status 2."""
    parser = argparse.ArgumentParser(prog=PROG, description="Print the summary of a logit cache.")
    parser.add_argument("path", help="cache directory or fsspec URL")
    args = parser.parse_args(argv)
    try:
        text = inspect(args.path)
    except CacheError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
