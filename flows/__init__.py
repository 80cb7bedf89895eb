"""Prefect flows, tasks, deployments and the `pld` command of pld-pipeline."""

PROJECT = "pld-pipeline"  # lets a Dask worker tell this package from another named `flows`
