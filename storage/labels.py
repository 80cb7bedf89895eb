"""What the manifest records about labels: the class list that made them, and whether the
teacher agreed with them over the pass (``Manifest.class_list`` / ``Manifest.label_check``).

Labels are the teacher's class indices only when the dataset's class folders were mapped
through the teacher's class list; both records let a reader tell that a cache's labels can
be trusted without re-running the teacher.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from storage.errors import InvalidManifestError

CLASS_LIST_SOURCES = ("list", "sorted-folders")


@dataclass(frozen=True)
class ClassList:
    """The class list that made the labels: label i is the class folder named ``names[i]``.

    Only its hash is stored (``class_list_sha256(names)``); ``source`` says whether the list
    was given (``"list"``) or is the dataset's sorted folder names (``"sorted-folders"``).
    """

    sha256: str
    num_classes: int
    source: str = "list"

    def __post_init__(self) -> None:
        if not (isinstance(self.sha256, str) and len(self.sha256) == 64):
            raise InvalidManifestError(
                f"class_list.sha256 must be 64 hex characters, got {self.sha256!r}"
            )
        if int(self.num_classes) < 1:
            raise InvalidManifestError(
                f"class_list.num_classes must be >= 1, got {self.num_classes!r}"
            )
        if self.source not in CLASS_LIST_SOURCES:
            raise InvalidManifestError(
                f"class_list.source must be one of {CLASS_LIST_SOURCES}, got {self.source!r}"
            )
        object.__setattr__(self, "num_classes", int(self.num_classes))


@dataclass(frozen=True)
class LabelCheck:
    """Teacher top-1 against the cached labels over the whole pass, and the least accepted.

    ``flagged`` (top1 < min_agreement) marks a cache whose labels probably do not follow
    the teacher's class order; students refuse it unless told otherwise.
    """

    top1: float
    min_agreement: float
    records: int
    flagged: bool | None = None

    def __post_init__(self) -> None:
        top1, least = float(self.top1), float(self.min_agreement)
        if not (0 <= top1 <= 1 and 0 <= least <= 1):
            raise InvalidManifestError(
                f"label_check.top1 and min_agreement must be in [0, 1], got {self.top1!r} "
                f"and {self.min_agreement!r}"
            )
        flagged = top1 < least
        if self.flagged is not None and bool(self.flagged) != flagged:
            raise InvalidManifestError(
                f"label_check.flagged={self.flagged!r} contradicts top1={top1} and "
                f"min_agreement={least}"
            )
        object.__setattr__(self, "top1", top1)
        object.__setattr__(self, "min_agreement", least)
        object.__setattr__(self, "records", int(self.records))
        object.__setattr__(self, "flagged", flagged)


def class_list_sha256(names: Sequence[str]) -> str:
    """Hash a class list: sha256 hex of the ``"name\\n"`` lines, in list order.

    Raises:
        InvalidManifestError: a name is empty or holds a newline.
    """
    digest = hashlib.sha256()
    for name in names:
        name = str(name)
        if not name or "\n" in name:
            raise InvalidManifestError(f"class name {name!r} is empty or holds a newline")
        digest.update(f"{name}\n".encode())
    return digest.hexdigest()
