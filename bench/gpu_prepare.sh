#!/usr/bin/env bash
# Prepare, here, what bench/gpu.sh needs on a bare GPU machine that has no network.
#
# That machine has Python 3.12 with torch, torchvision, numpy, pillow and a few more, but
# not zarr, numcodecs, dask/distributed, prefect, prefect-dask or pydantic, and no
# Fashion-MNIST. This script writes (both git-ignored, carried with `run carry=[...]`):
#
#   .whl/                   cp312 manylinux x86_64 wheels of every missing package and
#                           dependency, at the versions installed in .venv (the tested ones)
#   .gpu-data/fashion-mnist the first 3000 training and 600 test images of Fashion-MNIST
#                           (gzip IDX, as Debian's dataset-fashion-mnist), for the quick demo
#
# and checks the wheel set: installed with --target into a scratch folder under a
# Python 3.12 (pyenv's, when there is one, with the machine's preinstalled packages in a
# scratch venv), prefect, zarr, dask.distributed, pydantic and the project's storage and
# configs must import, a Prefect flow must run on the temporary server, and every
# requirement must be met (bench/gpu_wheels.py check). It prints the size to carry.
#
#   bench/gpu_prepare.sh             # PYTHON=.venv/bin/python by default
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=/work/main/.venv/bin/python  # a worktree shares the main checkout's venv
WHL=$ROOT/.whl
DATA=$ROOT/.gpu-data/fashion-mnist
SOURCE=${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}

echo "== wheels (cp312, manylinux x86_64) into $WHL"
mkdir -p "$WHL"
"$PY" bench/gpu_wheels.py list > "$WHL/requirements.txt"
while read -r spec; do
  name=${spec%%==*}
  version=${spec##*==}
  pattern=$(echo "$name" | tr '-' '_' | tr '[:upper:]' '[:lower:]')
  if ls "$WHL" | tr '[:upper:]' '[:lower:]' | grep -q "^${pattern}-${version}-"; then
    continue  # downloaded before
  fi
  if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$WHL" "$spec"; then
    echo "   $spec has no cp312 wheel on the index; building a pure-Python one"
    "$PY" -m pip wheel -q --no-deps --no-binary=:all: -w "$WHL" "$spec"
  fi
done < "$WHL/requirements.txt"
# Wheels of versions no longer in the list would shadow the right ones: remove them.
"$PY" - "$WHL" <<'EOF'
import pathlib, re, sys
folder = pathlib.Path(sys.argv[1])
wanted = {tuple(l.strip().lower().replace("-", "_").split("==")) for l in
          (folder / "requirements.txt").read_text().split()}
for wheel in folder.glob("*.whl"):
    name, version = wheel.name.split("-")[:2]
    if (re.sub(r"[-_.]+", "_", name.lower()), version.lower()) not in wanted:
        print(f"   removing stale {wheel.name}")
        wheel.unlink()
EOF
echo "   $(ls "$WHL"/*.whl | wc -l) wheels for $(wc -l < "$WHL/requirements.txt") packages"

echo "== Fashion-MNIST subset into $DATA"
mkdir -p "$DATA"
"$PY" - "$SOURCE" "$DATA" <<'EOF'
import gzip, pathlib, sys
source, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for prefix, keep in (("train", 3000), ("t10k", 600)):
    for kind in ("images-idx3", "labels-idx1"):
        name = f"{prefix}-{kind}-ubyte.gz"
        data = gzip.open(source / name).read()
        ndim = data[3]
        dims = [int.from_bytes(data[4 + 4 * d: 8 + 4 * d], "big") for d in range(ndim)]
        row = 1
        for d in dims[1:]:
            row *= d
        header = data[:4] + keep.to_bytes(4, "big") + data[8: 4 + 4 * ndim]
        body = data[4 + 4 * ndim: 4 + 4 * ndim + keep * row]
        with gzip.open(out / name, "wb", compresslevel=9) as f:
            f.write(header + body)
print(f"   {sum(p.stat().st_size for p in out.iterdir()) / 2**20:.1f} MiB")
EOF

echo "== checking the wheel set"
PY312=""
if command -v pyenv >/dev/null 2>&1; then
  for v in $(pyenv versions --bare 2>/dev/null | grep '^3\.12'); do
    PY312="$(pyenv root)/versions/$v/bin/python3.12"
  done
fi
[ -n "$PY312" ] || PY312=$(command -v python3.12 || true)
if [ -z "$PY312" ] || ! "$PY312" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  echo "   no Python 3.12 here: import check skipped (requirements were resolved for 3.12)"
else
  SCRATCH=$(mktemp -d)
  trap 'rm -rf "$SCRATCH"' EXIT
  "$PY312" -m venv "$SCRATCH/venv"
  # The GPU machine's own packages (torch and torchvision aside: too large to fetch here).
  "$SCRATCH/venv/bin/python" -m pip install -q numpy pillow fsspec pyyaml rich tqdm \
    cloudpickle psutil httpx python-dateutil markupsafe pytest
  "$SCRATCH/venv/bin/python" -m pip install -q --no-index --no-deps --no-compile \
    --target "$SCRATCH/site" "$WHL"/*.whl
  (
    cd "$SCRATCH"
    export PYTHONPATH="$SCRATCH/site:$ROOT" PREFECT_HOME="$SCRATCH/prefect" \
      PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
      PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90
    "$SCRATCH/venv/bin/python" "$ROOT/bench/gpu_wheels.py" check
    "$SCRATCH/venv/bin/python" - <<'EOF'
import dask.distributed, numcodecs, prefect, prefect_dask, pydantic, zarr
import storage
from pld_pipeline.configs.train import TrainConfig
from prefect import flow

@flow
def ping() -> int:
    return 1

assert ping() == 1
print(f"   imports and a Prefect flow run OK under Python 3.12: prefect {prefect.__version__}, "
      f"zarr {zarr.__version__}, dask {dask.__version__}, pydantic {pydantic.__version__}")
EOF
  )
fi

bytes=$(du -sb "$WHL" "$ROOT/.gpu-data" | awk '{s += $1} END {print s}')
tree=$(git ls-files -co --exclude-standard -z | xargs -0 stat -c %s 2>/dev/null | awk '{s += $1} END {print s}')
awk -v c="$bytes" -v t="$tree" 'BEGIN {printf "== to carry: .whl + .gpu-data = %.1f MiB; working tree %.1f MiB; total %.1f MiB of 64 MiB\n", c / 1048576, t / 1048576, (c + t) / 1048576}'
