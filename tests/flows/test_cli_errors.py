"""The `pld` command's errors as a user meets them: one line, exit 2, no traceback.

One table of bad inputs. Every case must end with exactly one `pld <cmd>: error: ...` line
on stderr, exit with status 2, print no Python traceback, and change no existing file.
Config, dataset, cache, weights and temperature/K errors must be found before any flow
starts, so those cases may write nothing at all. The whole table runs in this process
(`flows.cli.main`, with starting a flow made an error), and the installed `.venv/bin/pld`
runs its cases in a subprocess from a folder outside the repository (this checkout's
packages on PYTHONPATH), with PREFECT_API_URL at a port where nothing listens, so a case
that started a flow would fail otherwise. A damaged chunk is found by the run itself, on
a real Prefect server whose logs must keep the traceback the terminal leaves out;
`--verbose` prints it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster_testlib import REPO, cache_config, free_port, run_pld, user_env, write_yaml
from prefect_server import api, prefect_server

STUDENT = "pld_pipeline.demo.small_models:tiny_cnn"
# The weights torchvision would need for this; TORCH_HOME points at an empty folder.
TV_TEACHER = {"name": "resnet18", "weights": "ResNet18_Weights.IMAGENET1K_V1"}


@dataclass
class World:
    """Read-only inputs every case shares: images, a finished cache, a user's environment."""

    root: Path
    data: Path
    cache: Path
    env: dict[str, str]

    def cache_yaml(self, where: Path, output: Path | None = None, **overrides) -> Path:
        config = cache_config(self.data, str(output or self.cache), **overrides)
        return write_yaml(where / "cache.yaml", config)

    def train_config(self, where: Path, **overrides) -> dict:
        config = {
            "cache": str(self.cache), "dataset_root": str(self.data), "classes": "sorted-folders",
            "student": {"name": STUDENT, "image_size": 16}, "loss": {"name": "pld"},
            "optim": {"name": "sgd", "lr": 0.05}, "epochs": 1, "batch_size": 4,
            "device": "cpu", "num_workers": 0, "run_dir": str(where / "run"),
        }  # fmt: skip
        config.update(overrides)
        return config

    def train_yaml(self, where: Path, **overrides) -> Path:
        return write_yaml(where / "train.yaml", self.train_config(where, **overrides))


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_imagefolder: Path) -> World:
    """The tiny image folder and its cache (2 replay views, top-4 of 10, T = 1 and 2),
    written with the library's own pass steps (no Prefect)."""
    from pld_pipeline.configs.cache import CacheConfig
    from pld_pipeline.teacher import cache_build, cache_report

    root = tmp_path_factory.mktemp("cli-errors")
    data = Path(shutil.copytree(tiny_imagefolder, root / "data"))
    cache = root / "cache.zarr"
    config = CacheConfig.model_validate(cache_config(data, str(cache)))
    plan = cache_build.prepare_cache(config)
    for shard, views in plan.shard_tasks():
        cache_build.build_shard(config, shard, views)
    cache_report.finalize_cache(config)
    (root / "empty-torch-home").mkdir()
    env = user_env(
        root, PYTHONPATH=str(REPO), TORCH_HOME=str(root / "empty-torch-home"),
        # Nothing listens here: a case that started a flow would fail to reach Prefect.
        PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api",
    )  # fmt: skip
    return World(root, data, cache, env)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real Prefect server for the cases whose error comes from inside a flow run."""
    with prefect_server(tmp_path_factory.mktemp("cli-errors-prefect")) as running:
        yield running


# -- the cases ---------------------------------------------------------------------------
# Each returns the arguments after `pld`, preparing what it needs under its own folder.


def missing_dataset_cache(w: World, tmp: Path) -> list[str]:
    return ["cache", "--config", str(w.cache_yaml(tmp, dataset_root=str(tmp / "nowhere")))]


def bad_field_cache(w: World, tmp: Path) -> list[str]:
    return ["cache", "--config", str(w.cache_yaml(tmp)), "k=0"]


def unknown_field_cache(w: World, tmp: Path) -> list[str]:
    return ["cache", "--config", str(w.cache_yaml(tmp)), "views.num_view=3"]


def bad_yaml(w: World, tmp: Path) -> list[str]:
    (tmp / "cache.yaml").write_text("dataset_root: [/data\nk: 4\n")
    return ["cache", "--config", str(tmp / "cache.yaml")]


def missing_config_file(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(tmp / "nope.yaml")]


def bad_override(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp)), "epochs"]


def missing_weights(w: World, tmp: Path) -> list[str]:
    config = w.cache_yaml(tmp, output=tmp / "new.zarr", teacher=TV_TEACHER, classes=None)
    return ["cache", "--config", str(config)]


def output_holds_another_cache(w: World, tmp: Path) -> list[str]:
    return ["cache", "--config", str(w.cache_yaml(tmp, k=3))]


def output_not_a_cache(w: World, tmp: Path) -> list[str]:
    (tmp / "thesis").mkdir()
    (tmp / "thesis" / "chapter1.tex").write_text("my thesis")
    return ["cache", "--config", str(w.cache_yaml(tmp, output=tmp / "thesis"))]


def changed_dataset(tmp: Path, w: World) -> Path:
    """A copy of the images with one more file: other keys, another fingerprint."""
    data = Path(shutil.copytree(w.data, tmp / "data"))
    shutil.copy(data / "cat" / "chelsea.jpg", data / "cat" / "chelsea_copy.jpg")
    return data


def cache_resume_changed_dataset(w: World, tmp: Path) -> list[str]:
    return ["cache", "--config", str(w.cache_yaml(tmp, dataset_root=str(changed_dataset(tmp, w))))]


def no_class_list(w: World, tmp: Path) -> list[str]:
    config = w.cache_yaml(tmp, output=tmp / "new.zarr", classes=None)
    return ["cache", "--config", str(config)]


def missing_dataset_train(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp, dataset_root=str(tmp / "nowhere")))]


def path_not_a_cache(w: World, tmp: Path) -> list[str]:
    (tmp / "runs").mkdir()
    (tmp / "runs" / "notes.txt").write_text("not a cache")
    return ["train", "--config", str(w.train_yaml(tmp, cache=str(tmp / "runs")))]


def missing_cache(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp, cache=str(tmp / "nope.zarr")))]


def uncached_temperature(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp)), "loss.temperature=3"]


def uncached_default_temperature(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp)), "loss.name=kd"]  # kd: T = 4


def k_above_cached(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp)), "k=5"]


def train_changed_dataset(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp, dataset_root=str(changed_dataset(tmp, w))))]


def incomplete_cache(w: World, tmp: Path) -> list[str]:
    import zarr

    cache = Path(shutil.copytree(w.cache, tmp / "half.zarr"))
    done = zarr.open_group(str(cache), mode="r+")["done"]
    done[1, 0] = False  # as if the pass was killed before this shard's done bit
    return ["train", "--config", str(w.train_yaml(tmp, cache=str(cache)))]


def run_dir_holds_a_run(w: World, tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "result.json").write_text("{}")
    return ["train", "--config", str(w.train_yaml(tmp))]


def unknown_student(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp)), "student.name=resnet9000"]


def bad_loss_parameter(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp)), "loss.params.alpha=1"]


def dense_from_topk(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp)), "target_form=dense"]


def online_teacher_weights(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp, online_teacher=TV_TEACHER))]


def batch_too_large(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp)), "batch_size=64"]


def sweep_uncached_temperature(w: World, tmp: Path) -> list[str]:
    base = w.train_config(tmp)
    grid = {"loss.name": ["kd"], "loss.temperature": [1.0, 3.0]}
    config = write_yaml(
        tmp / "sweep.yaml", {"base": base, "grid": grid, "sweep_dir": str(tmp / "s")}
    )
    return ["sweep", "--config", str(config)]


def sweep_bad_grid_key(w: World, tmp: Path) -> list[str]:
    base = w.train_config(tmp)
    grid = {"loss.nam": ["kd", "pld"]}
    config = write_yaml(
        tmp / "sweep.yaml", {"base": base, "grid": grid, "sweep_dir": str(tmp / "s")}
    )
    return ["sweep", "--config", str(config)]


def demo_without_fashion_mnist(w: World, tmp: Path) -> list[str]:
    return ["demo", "--quick", "--workdir", str(tmp / "work"), f"source={tmp / 'nowhere'}"]


def demo_unknown_loss(w: World, tmp: Path) -> list[str]:
    return ["demo", "--quick", "--workdir", str(tmp / "work"), "losses=[ce,pdl]"]


def inspect_not_a_cache(w: World, tmp: Path) -> list[str]:
    return ["inspect", str(w.data)]


def damage_chunk(w: World, tmp: Path) -> Path:
    """A copy of the cache with one byte of a topk_logp chunk of view 0 flipped."""
    cache = Path(shutil.copytree(w.cache, tmp / "damaged.zarr"))
    chunk = cache / "topk_logp" / "c" / "0" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    return cache


def inspect_damaged_chunk(w: World, tmp: Path) -> list[str]:
    return ["inspect", str(damage_chunk(w, tmp))]


def serve_bad_schedules(w: World, tmp: Path) -> list[str]:
    (tmp / "schedules.yaml").write_text("cache-teachr:\n  cron: '0 2 * * 0'\n")
    return ["serve", "--schedules", str(tmp / "schedules.yaml")]


def train_damaged_chunk(w: World, tmp: Path) -> list[str]:
    return ["train", "--config", str(w.train_yaml(tmp, cache=str(damage_chunk(w, tmp))))]


# (case, message fragment); every one of these is found before a flow starts.
BEFORE_ANY_FLOW: list[tuple[Callable[[World, Path], list[str]], str]] = [
    (missing_dataset_cache, "is not a folder"),
    (bad_field_cache, "k: Input should be greater than or equal to 1"),
    (unknown_field_cache, "views.num_view: unknown field"),
    (bad_yaml, "is not valid YAML"),
    (missing_config_file, "does not exist; pass an existing YAML file"),
    (bad_override, "is not of the form key=value"),
    (missing_weights, "are not on this machine"),
    (output_holds_another_cache, "holds a cache with another manifest"),
    (output_not_a_cache, "is not a zarr cache"),
    (cache_resume_changed_dataset, "dataset_fingerprint"),
    (no_class_list, "classes"),
    (missing_dataset_train, "is not a folder"),
    (path_not_a_cache, "is not a cache"),
    (missing_cache, "does not exist"),
    (uncached_temperature, "loss temperature 3 is not cached"),
    (uncached_default_temperature, "kd's default temperature 4 is not cached"),
    (k_above_cached, "k=5 exceeds"),
    (train_changed_dataset, "was made from another dataset"),
    (incomplete_cache, "is incomplete"),
    (run_dir_holds_a_run, "already holds a run"),
    (unknown_student, "Unknown torchvision classification model 'resnet9000'"),
    (bad_loss_parameter, "has no parameter 'alpha'"),
    (dense_from_topk, "needs a full-logit cache"),
    (online_teacher_weights, "are not on this machine"),
    (batch_too_large, "larger than the 12 training images"),
    (sweep_uncached_temperature, "loss temperature 3 is not cached"),
    (sweep_bad_grid_key, "'nam' is not a field of LossConfig"),
    (demo_without_fashion_mnist, "Fashion-MNIST not found"),
    (demo_unknown_loss, "losses.1"),
    (inspect_not_a_cache, "is not a cache"),
    (inspect_damaged_chunk, "topk_logp/c/0/1/0 cannot be decoded"),
    (serve_bad_schedules, "names deployment 'cache-teachr'"),
]


def file_hashes(*roots: Path) -> dict[str, str]:
    """sha256 of every file under `roots`, by path."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for root in roots
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def assert_one_error_line(code: int, err: str, command: str, fragment: str) -> None:
    """Exit 2, no traceback, and stderr ending in the one `pld <command>: error:` line."""
    assert code == 2, err[-4000:]
    assert "Traceback" not in err, err[-4000:]
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith(f"pld {command}: error: ")]
    assert len(errors) == 1, err[-4000:]
    assert lines[-1] == errors[0], err[-4000:]
    assert fragment in errors[0], errors[0]


@pytest.mark.parametrize(
    ("case", "fragment"), BEFORE_ANY_FLOW, ids=[case.__name__ for case, _ in BEFORE_ANY_FLOW]
)
def test_user_errors_are_one_line_before_any_flow(
    case, fragment, world, tmp_path, monkeypatch, capsys
):
    from flows import cli

    def no_flow(*args, **kwargs):
        raise AssertionError("a flow was started")

    monkeypatch.setattr(cli, "_run", no_flow)
    monkeypatch.setenv("TORCH_HOME", world.env["TORCH_HOME"])
    monkeypatch.chdir(tmp_path)
    args = case(world, tmp_path)
    before = file_hashes(world.root, tmp_path)
    code = cli.main(args)
    err = capsys.readouterr().err
    assert_one_error_line(code, err, args[0], fragment)
    # Nothing changed, and nothing new was written (no cache, no run folder, no data).
    assert file_hashes(world.root, tmp_path) == before


# The installed command, on the kinds of mistake users make most.
INSTALLED = [
    (case, fragment)
    for case, fragment in BEFORE_ANY_FLOW
    if case
    in (
        missing_dataset_cache, bad_field_cache, bad_yaml, missing_weights,
        output_holds_another_cache, missing_dataset_train, path_not_a_cache,
        uncached_temperature, k_above_cached, train_changed_dataset,
        demo_without_fashion_mnist, inspect_damaged_chunk,
    )
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    ("case", "fragment"), INSTALLED, ids=[case.__name__ for case, _ in INSTALLED]
)
def test_installed_pld_user_errors(case, fragment, world, tmp_path):
    args = case(world, tmp_path)
    before = file_hashes(world.root, tmp_path)
    result = run_pld(args, tmp_path, world.env, timeout=300)
    assert_one_error_line(result.returncode, result.stderr, args[0], fragment)
    assert file_hashes(world.root, tmp_path) == before
    assert "Starting temporary server" not in result.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_an_error_inside_a_run_is_one_line_and_prefect_keeps_the_traceback(world, server, tmp_path):
    """A damaged chunk is found when the run reads it: the flow fails, the terminal shows
    one line, the server's logs of that run hold the traceback."""
    args = train_damaged_chunk(world, tmp_path)
    before = file_hashes(world.root, tmp_path)
    failed_before = failed_runs(server["url"])
    env = dict(world.env, PREFECT_API_URL=server["url"])
    result = run_pld(args, tmp_path, env, timeout=600)
    assert_one_error_line(
        result.returncode, result.stderr, "train", "topk_logp/c/0/1/0 cannot be decoded"
    )
    after = file_hashes(world.root, tmp_path)
    assert {path: after.get(path) for path in before} == before  # only new files (run/)
    new_runs = sorted(failed_runs(server["url"]) - failed_before)
    assert len(new_runs) == 1
    logs = api(server["url"], "/logs/filter", {"logs": {"flow_run_id": {"any_": new_runs}}})
    tracebacks = [
        log["message"] for log in logs if "Traceback (most recent call last)" in log["message"]
    ]
    assert any("CorruptChunkError" in text for text in tracebacks), [log["message"] for log in logs]


def failed_runs(url: str) -> set[str]:
    """Ids of the server's failed train-student flow runs."""
    body = {"flow_runs": {"state": {"type": {"any_": ["FAILED"]}}}}
    flows = {f["id"]: f["name"] for f in api(url, "/flows/filter", {})}
    return {
        r["id"]
        for r in api(url, "/flow_runs/filter", body)
        if flows[r["flow_id"]] == "train-student"
    }


@pytest.mark.slow
@pytest.mark.integration
def test_verbose_prints_the_tracebacks(world, server, tmp_path):
    args = [*train_damaged_chunk(world, tmp_path), "--verbose"]
    result = run_pld(args, tmp_path, dict(world.env, PREFECT_API_URL=server["url"]), timeout=600)
    assert result.returncode == 2, result.stderr[-4000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("pld train: error: ")
    assert "cannot be decoded" in lines[-1]
    assert "Traceback (most recent call last)" in result.stderr
    assert "storage.errors.CorruptChunkError" in result.stderr


@pytest.mark.integration
def test_verbose_before_a_flow_prints_the_traceback_then_the_line(world, tmp_path):
    args = [*uncached_temperature(world, tmp_path), "-v"]
    result = run_pld(args, tmp_path, world.env, timeout=300)
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert "TemperatureNotCachedError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("pld train: error: loss temperature 3")


BROKEN_TEACHER = """
def broken(num_classes=10):
    raise RuntimeError("an unexpected bug in the teacher factory")
"""


@pytest.mark.integration
def test_an_unexpected_error_keeps_its_traceback(world, tmp_path):
    """A bug (not a user's mistake) is not dressed up as one line: its traceback shows."""
    (tmp_path / "user_models.py").write_text(BROKEN_TEACHER)
    config = world.cache_yaml(
        tmp_path, output=tmp_path / "new.zarr",
        teacher={"name": "user_models:broken", "num_classes": 10, "input_size": 24},
    )  # fmt: skip
    env = dict(world.env, PYTHONPATH=f"{REPO}:{tmp_path}")
    result = run_pld(["cache", "--config", str(config)], tmp_path, env, timeout=300)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: an unexpected bug in the teacher factory" in result.stderr
    assert "pld cache: error:" not in result.stderr


@pytest.mark.integration
def test_a_config_error_imports_no_torch_and_no_prefect(world, tmp_path):
    """The config is read before anything heavy is imported (this is what makes it quick)."""
    code = (
        "import sys\n"
        "from flows.cli import main\n"
        f"code = main(['train', '--config', {str(world.train_yaml(tmp_path))!r}, 'epochs=0'])\n"
        "heavy = sorted(m for m in ('torch', 'prefect', 'zarr', 'storage') if m in sys.modules)\n"
        "print(code, heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=world.env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr
    assert out.stderr.strip().endswith(
        "epochs: Input should be greater than 0 (got 0); fix these fields and retry."
    )
