"""Which wheels a bare GPU machine needs for bench/gpu.sh, and whether a wheel set is complete.

The GPU machine has Python 3.12 with torch, torchvision and a few common packages but no
network. `bench/gpu_prepare.sh` (run here) downloads the rest as wheels into `.whl/`;
`bench/gpu.sh` (run there) installs them into a scratch folder on PYTHONPATH.

    python bench/gpu_wheels.py list            # NAME==VERSION per missing package
    python bench/gpu_wheels.py check           # every requirement met? (exit 1 if not)

`list` walks the requirements of the project's non-torch dependencies as installed in
this interpreter (so the versions are the ones the tests ran with), evaluated for
CPython 3.12 on Linux, and leaves out what the GPU machine already has
(`PREINSTALLED`). Small pure-Python packages whose recent versions the dependencies ask
for (typing-extensions >= 4.16, certifi >= 2026.10, jinja2 >= 3.1.6, ...) are carried
even if the machine has some version: a newer copy first on the path is harmless.
`check` reads every installed distribution visible to the interpreter (PYTHONPATH
included) and reports each requirement, of the roots and of everything they pull in,
that no installed version satisfies.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import sys

from packaging.markers import default_environment
from packaging.requirements import Requirement

ROOTS = ("prefect", "prefect-dask", "zarr", "numcodecs", "dask[distributed]", "distributed",
         "pydantic")  # fmt: skip
# On the GPU machine already (the brief of issue 11), with their own dependencies; binary
# or large, and what torch was built against: never shadowed.
PREINSTALLED = frozenset({
    "torch", "torchvision", "numpy", "pillow", "fsspec", "pyyaml", "rich", "markdown-it-py",
    "mdurl", "pygments", "tqdm", "scikit-image", "scipy", "matplotlib", "pytest", "pluggy",
    "iniconfig", "cloudpickle", "psutil", "httpx", "httpcore", "h11", "idna",
    "markupsafe", "networkx", "sympy", "mpmath", "filelock",
    "setuptools", "contourpy", "cycler", "fonttools", "kiwisolver", "pyparsing",
})  # fmt: skip


def norm(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def target_environment() -> dict[str, str]:
    """Marker environment of the GPU machine: CPython 3.12 on x86-64 Linux."""
    env = default_environment()
    env.update(python_version="3.12", python_full_version="3.12.3", sys_platform="linux",
               platform_system="Linux", platform_machine="x86_64",
               implementation_name="cpython", platform_python_implementation="CPython")  # fmt: skip
    return env


def applies(req: Requirement, extras: set[str], env: dict[str, str]) -> bool:
    """Whether `req` is needed for a package installed with `extras` in `env`."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras | {""}))


def closure(roots: tuple[str, ...] = ROOTS) -> dict[str, str]:
    """{normalised name: installed version} of the roots and everything they require."""
    env = target_environment()
    found: dict[str, set[str]] = {}
    versions: dict[str, str] = {}
    stack = [Requirement(r) for r in roots]
    while stack:
        req = stack.pop()
        name = norm(req.name)
        extras = set(req.extras)
        if name in found and extras <= found[name]:
            continue
        dist = md.distribution(name)  # PackageNotFoundError: install the project first
        found[name] = found.get(name, set()) | extras
        versions[name] = dist.version
        stack += [r for r in map(Requirement, dist.requires or []) if applies(r, extras, env)]
    return versions


def missing() -> list[str]:
    """NAME==VERSION of every package the GPU machine needs but lacks."""
    return sorted(f"{n}=={v}" for n, v in closure().items() if n not in PREINSTALLED)


def unmet() -> list[str]:
    """Requirements of the roots' closure that no installed distribution satisfies."""
    env = target_environment()
    installed: dict[str, str] = {}
    for d in md.distributions():  # in sys.path order: the first one found is the one imported
        installed.setdefault(norm(d.metadata["Name"]), d.version)
    problems, seen = [], set()
    stack = [(None, Requirement(r)) for r in ROOTS]
    while stack:
        parent, req = stack.pop()
        name = norm(req.name)
        key = (name, str(req.specifier), tuple(sorted(req.extras)))
        if key in seen:
            continue
        seen.add(key)
        version = installed.get(name)
        if version is None:
            problems.append(f"{req} (needed by {parent or 'the project'}): not installed")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req} (needed by {parent or 'the project'}): {version} installed")
        dist = md.distribution(name)
        stack += [(name, r) for r in map(Requirement, dist.requires or [])
                  if applies(r, set(req.extras), env)]  # fmt: skip
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("list", "check"))
    args = parser.parse_args(argv)
    if args.command == "list":
        print("\n".join(missing()))
        return 0
    problems = unmet()
    for p in problems:
        print(f"unmet: {p}")
    print(f"{'all requirements met' if not problems else f'{len(problems)} unmet requirements'}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
