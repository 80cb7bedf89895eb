"""The student's data path: the target plan checked against the cache, the epoch's views and
slabs, the samplers, datasets and loaders, and decoding on the GPU.
"""
