"""`pld serve` deployments with schedules, and the CLI's config handling and error exits."""

from __future__ import annotations

import pytest

from pld_pipeline.errors import ConfigError


def test_every_flow_gets_a_deployment_and_schedules_apply(tmp_path):
    from flows.deployments import build_deployments

    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(
        "cache-teacher:\n  cron: '0 2 * * 0'\n  parameters:\n    config:\n"
        "      dataset_root: /data/imagenet\n      output: /caches/r50\n"
        "      teacher: {name: resnet50, weights: ResNet50_Weights.IMAGENET1K_V2}\n"
        "sweep:\n  cron: '30 3 * * *'\n  paused: true\n"
    )
    deployments = {d.name: d for d in build_deployments(schedules)}
    assert set(deployments) == {"cache-teacher", "train-student", "sweep", "demo"}
    crons = {name: [s.schedule.cron for s in d.schedules] for name, d in deployments.items()}
    assert crons["cache-teacher"] == ["0 2 * * 0"]
    assert crons["sweep"] == ["30 3 * * *"]
    assert crons["demo"] == []
    assert crons["train-student"] == []
    assert deployments["cache-teacher"].parameters["config"]["output"] == "/caches/r50"
    # The flow docstring is the deployment's description in the UI.
    assert "teacher" in deployments["cache-teacher"].description.lower()
    # One pydantic parameter: the UI renders its fields (with descriptions) as a form.
    from prefect.utilities.callables import parameter_schema

    from flows.train_student import train_student

    schema = parameter_schema(train_student.fn).model_dump()
    assert list(schema["properties"]) == ["config"]
    fields = schema["definitions"]["TrainConfig"]["properties"]
    assert (
        "peak learning rate"
        in schema["definitions"]["OptimConfig"]["properties"]["lr"]["description"]
    )
    assert fields["loss"]
    assert fields["epochs"]["description"]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("nonsense:\n  cron: '* * * * *'\n", "names deployment 'nonsense'"),
        ("sweep:\n  cronn: '* * * * *'\n", "must be a mapping with keys"),
        ("- a\n- b\n", "must hold a mapping"),
    ],
)
def test_bad_schedule_files_are_refused(tmp_path, text, fragment):
    from pld_pipeline.configs.schedules import read_schedules

    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        read_schedules(path)


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    from flows.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("dataset_root: /nowhere\noutput: /tmp/x\nteacher: {name: resnet18}\nk: 0\n")
    assert main(["cache", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "k: Input should be greater than or equal to 1" in err
    assert main(["cache", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "--config", str(config), "oops"]) == 2
    assert "not of the form key=value" in capsys.readouterr().err
