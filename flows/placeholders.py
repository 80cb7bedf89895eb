"""`{date}` in a cache's `output`: one new cache per scheduled teacher pass.

A weekly `cache-teacher` deployment has fixed parameters, yet each week's pass must write
a new cache (last week's stays in use, and a changed dataset could not resume into it).
`output: s3://caches/weekly-{date}` becomes `s3://caches/weekly-2026-11-29`: the date the
flow run was *scheduled* for (UTC), so a retry of the same flow run resumes into the same
cache, and a late start does not change the name.
"""

from __future__ import annotations

import datetime as dt

DATE = "{date}"


def resolve_output(output: str, scheduled: dt.datetime | None) -> str:
    """`output` with `{date}` replaced by the scheduled date (YYYY-MM-DD, UTC); other text as is."""
    if DATE not in output:
        return output
    when = scheduled or dt.datetime.now(dt.UTC)
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return output.replace(DATE, when.strftime("%Y-%m-%d"))
