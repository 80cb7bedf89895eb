"""Reading back what a flow published, through the Prefect API (as the UI does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def cache_stats_artifact(cache: Path) -> tuple[str, list[dict[str, Any]]]:
    """The one `cache-stats` table published for `cache`: (description, rows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["cache-stats"]))
        )
    mine = [a for a in artifacts if str(cache) in (a.description or "")]
    assert len(mine) == 1, f"{len(mine)} cache-stats artifacts for {cache}"
    rows = mine[0].data if isinstance(mine[0].data, list) else json.loads(mine[0].data)
    return mine[0].description, rows
