"""Library error classes: one base, one subclass per problem, each also a fitting builtin.

Every class takes a single message string, so errors raised inside DataLoader worker
processes are re-raised in the parent with their own type (torch rebuilds them as
`type(message)`). Messages say what is wrong, the value seen, and the fix.
"""

from __future__ import annotations


class PLDError(Exception):
    """Base of every error raised on purpose by pld_pipeline (catch this in CLIs and flows)."""


class ConfigError(PLDError, ValueError):
    """A configuration value is invalid or inconsistent (e.g. K larger than the class count)."""


class ClassListError(ConfigError):
    """Labels cannot be trusted to be teacher class indices: no class list where one is needed,
    a malformed list, or a dataset that maps its folders to other indices than the cache."""


class LabelOrderError(PLDError, ValueError):
    """The teacher rarely agrees with the labels: they probably do not follow its class order."""


class DatasetError(PLDError, ValueError):
    """A dataset folder does not follow the ImageNet layout (no classes, empty class, ...)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The dataset root or split folder does not exist."""


class BadImageError(PLDError, OSError):
    """An image file cannot be read or decoded; the message names its path and the fix.

    `reason` says why in a few words ("the file is empty (0 bytes)"); it is the whole
    message on an error rebuilt from its message alone (raised in a DataLoader worker).
    """

    FIX = "Replace or remove the file, or set skip_bad_images: true to record it as bad and go on."

    @property
    def reason(self) -> str:
        return getattr(self, "_reason", str(self))

    @classmethod
    def of(cls, path: object, reason: str) -> BadImageError:
        """The error for image `path` (a path or a key): `reason`, then the fix."""
        error = cls(f"Cannot use image {str(path)!r}: {reason}. {cls.FIX}")
        error._reason = reason
        return error


class ViewError(PLDError, ValueError):
    """A view (crop box, flip, size) does not fit the image it is applied to."""


class ModelNotFoundError(PLDError, LookupError):
    """An unknown model name, or a `module:callable` factory that cannot be imported."""


class MissingExtraError(ModelNotFoundError, ImportError):
    """A model needs an optional extra that is not installed; the message names the pip command."""


class WeightsNotFoundError(PLDError, FileNotFoundError):
    """A weights or checkpoint file is missing locally; the message says where to put it."""


class WeightsCorruptError(PLDError, ValueError):
    """A weights or checkpoint file exists but does not match its hash or the model."""


class NonFiniteTeacherError(PLDError, FloatingPointError):
    """The teacher produced NaN or infinite logits; the message names the samples."""


class ReplayCheckError(PLDError, RuntimeError):
    """Cached teacher outputs differ from a fresh teacher forward on the same views."""


class ClusterError(PLDError, RuntimeError):
    """The Dask cluster running a teacher pass cannot run its shard tasks."""


class SchedulerUnreachableError(ClusterError, ConnectionError):
    """The Dask scheduler cannot be reached, or was lost mid-pass."""


class WorkersLostError(ClusterError):
    """No usable Dask worker was left for longer than the configured bound."""


class WorkerEnvironmentError(ClusterError, ImportError):
    """A Dask worker does not import this project's packages (not installed, or shadowed)."""


class ShardTaskError(ClusterError):
    """A shard task kept killing its workers, or failed in a way a retry cannot fix."""


class CheckpointError(PLDError, ValueError):
    """A checkpoint is missing, unreadable, or does not belong to this run."""


class DivergedError(PLDError, FloatingPointError):
    """Every training loss so far in an epoch was NaN or infinite."""
