"""The student wing: training from a cache, its run directory, results, DDP and sweep summaries.

Reads the cache the teacher wing wrote (and, for online teachers, the teacher's models and
records); imports nothing from `pld_pipeline.demo`.
"""
