"""pld-pipeline's library: losses, datasets, views, models, teacher pass and student training.

Imports torch and storage, never Prefect: everything here runs from a notebook.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pld-pipeline")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
