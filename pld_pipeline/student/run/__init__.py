"""One student run: `build_run(config) -> Run` and `fit`, and what a run owns.

Its placement and AMP, DDP, optimizer and schedule, checkpoints and run folder, metrics,
evaluation and result, and the online teacher. The data it trains on comes from
`pld_pipeline.student.data`.
"""
