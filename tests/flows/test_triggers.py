"""schedules.yaml triggers -> Prefect DeploymentEventTriggers (built here, no server; the real
server test in test_operations.py shows one start a run)."""

from __future__ import annotations

import os

import pytest
import yaml

from pld_pipeline.errors import ConfigError

BASE = {
    "cache": "placeholder", "dataset_root": "/data/imagenet", "dataset_split": "train",
    "student": {"name": "resnet50"}, "loss": {"name": "pld"}, "run_dir": "unused",
}  # fmt: skip


def sweep_entry(**trigger) -> dict:
    return {
        "parameters": {"config": {"base": dict(BASE), "grid": {"loss.name": ["kd", "pld"]},
                                  "sweep_dir": "/runs/weekly"}},
        "trigger": trigger,
    }  # fmt: skip


def test_sweep_trigger_templates_the_cache_url_and_gives_each_cache_its_folder():
    from flows.deployments import make_trigger

    trigger = make_trigger("sweep", sweep_entry(cache="s3://caches/weekly*"), "s.yaml")
    assert trigger.expect == {"pld.cache.finalized"}
    assert trigger.match.model_dump() == {"prefect.resource.id": "s3://caches/weekly*"}
    config = trigger.parameters["config"]
    assert config["base"]["cache"] == "{{ event.resource.id }}"
    assert config["sweep_dir"] == "/runs/weekly/{{ event.resource.name }}"
    # Everything else of the deployment's config is passed on unchanged.
    assert config["grid"] == {"loss.name": ["kd", "pld"]}
    assert {k: v for k, v in config["base"].items() if k != "cache"} == {
        k: v for k, v in BASE.items() if k != "cache"
    }
    assert trigger.enabled
    assert trigger.name == "sweep-on-new-cache"
    # As an automation: one RunDeployment action with these parameters.
    trigger.set_deployment_id("00000000-0000-0000-0000-000000000001")
    automation = trigger.as_automation()
    assert automation.actions[0].parameters == trigger.parameters
    assert automation.trigger.within.total_seconds() == 0  # fires on every matching event


def test_trigger_overrides_merge_and_a_templated_folder_is_kept():
    from flows.deployments import make_trigger

    entry = sweep_entry(
        parameters={"config": {"max_parallel": 3, "sweep_dir": "/runs/{{ event.payload.teacher }}"}}
    )
    trigger = make_trigger("sweep", entry, "s.yaml")
    config = trigger.parameters["config"]
    assert config["max_parallel"] == 3
    assert config["sweep_dir"] == "/runs/{{ event.payload.teacher }}"
    assert config["base"]["cache"] == "{{ event.resource.id }}"
    assert trigger.match.model_dump() == {}  # no `cache`: any finalized cache


def test_train_student_trigger_and_local_cache_patterns_become_absolute(tmp_path, monkeypatch):
    from flows.deployments import make_trigger

    monkeypatch.chdir(tmp_path)
    entry = {"parameters": {"config": dict(BASE, run_dir="runs/r50")},
             "trigger": {"cache": "caches/weekly-*", "enabled": False}}  # fmt: skip
    trigger = make_trigger("train-student", entry, "s.yaml")
    expected = os.path.join(str(tmp_path), "caches", "weekly-") + "*"
    assert trigger.match.model_dump() == {"prefect.resource.id": expected}
    assert trigger.parameters["config"]["cache"] == "{{ event.resource.id }}"
    assert trigger.parameters["config"]["run_dir"] == "runs/r50/{{ event.resource.name }}"
    assert trigger.enabled is False


@pytest.mark.parametrize(
    ("name", "entry", "fragment"),
    [
        ("cache-teacher", {"parameters": {"config": {}}, "trigger": {}}, "only sweep and train-student"),
        ("sweep", {"trigger": {"cache": "s3://c*"}}, "has a trigger but no `parameters"),
        ("sweep", dict(sweep_entry(), trigger={"cahce": "s3://c*"}), "must be a mapping with keys"),
        ("sweep", {"parameters": {"config": {"grid": {}, "sweep_dir": "x"}}, "trigger": {}},
         "needs config.base"),
        ("sweep", dict(sweep_entry(parameters={"config": {"max_parallel": 0}})),
         "triggered run's config of 'sweep'"),
    ],
)  # fmt: skip
def test_bad_triggers_are_refused_naming_the_problem(name, entry, fragment):
    from flows.deployments import make_trigger

    with pytest.raises(ConfigError, match=fragment):
        make_trigger(name, entry, "s.yaml")


def test_schedule_file_with_a_trigger_builds_a_triggered_deployment(tmp_path):
    from flows.deployments import build_deployments
    from pld_pipeline.configs.schedules import read_schedules

    path = tmp_path / "schedules.yaml"
    path.write_text(yaml.safe_dump({
        "cache-teacher": {"cron": "0 2 * * 0", "parameters": {"config": {
            "dataset_root": "/data/imagenet", "output": "s3://caches/weekly-{date}",
            "teacher": {"name": "resnet152"}}}},
        "sweep": sweep_entry(cache="s3://caches/weekly*"),
    }))  # fmt: skip
    deployments = {d.name: d for d in build_deployments(path)}
    assert [t.name for t in deployments["sweep"].triggers] == ["sweep-on-new-cache"]
    assert deployments["sweep"].schedules == []
    assert deployments["cache-teacher"].triggers == []
    # A bad trigger is refused when the file is read, before anything is served.
    path.write_text(yaml.safe_dump({"demo": {"trigger": {}}}))
    with pytest.raises(ConfigError, match="only sweep and train-student"):
        read_schedules(path)
