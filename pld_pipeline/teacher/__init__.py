"""The teacher wing: models by name, their weights, the teacher pass and the cache it writes.

Reads images and writes the logit cache; imports nothing from `pld_pipeline.student` or
`pld_pipeline.demo`.
"""
