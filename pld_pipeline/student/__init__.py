"""The student wing: training from a cache.

Rooms: `run/` (one run: `build_run`, `fit`, its placement, DDP, optimizer, checkpoints,
run folder, metrics and result, the checks before it starts) and `data/` (the target plan
against the cache, each epoch's views and slabs, the datasets, loaders and GPU decoding).
Multi-run reports live in `pld_pipeline.reports`. Reads the cache the teacher wing wrote
(and, for online teachers, the teacher's models and records); imports nothing from
`pld_pipeline.demo`.
"""
