"""Which cached views each epoch trains on, and their slabs in memory (the next epoch's prefetched).

With `views_per_image` m, every image is decoded once per epoch and trained on m of its
cached views, so an epoch is N * m samples (N images). Epoch e uses the views

    (e * m + j) mod V,  j = 0 .. m - 1,

m distinct views (m <= V) that cycle through all V evenly; with m = 1 this is the familiar
"epoch e uses view e mod V". The ids depend on the epoch alone (the same for every seed,
rank, worker count and restart point) and each epoch's ids are recorded in its metrics.
A run of E epochs at m sees E * m sample-epochs: to compare m = 4 with m = 1 at equal
samples seen, give the m = 4 run a quarter of the epochs (the LR schedule then has the
same number of steps).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from pld_pipeline.errors import ConfigError


def epoch_view_ids(epoch: int, views_per_image: int, num_views: int) -> tuple[int, ...]:
    """The m cached views epoch `epoch` trains on, in slot order.

    Raises:
        ConfigError: m < 1 or m > V (an image has only V distinct views).
    """
    if not 1 <= views_per_image <= num_views:
        raise ConfigError(
            f"views_per_image={views_per_image} needs 1 <= m <= the cache's {num_views} views; "
            f"lower views_per_image or cache more views."
        )
    return tuple((epoch * views_per_image + j) % num_views for j in range(views_per_image))


def own_crop_ids(epoch: int, views_per_image: int) -> tuple[int, ...]:
    """View ids of the student's own random crops in epoch `epoch` (no replay cache):
    e * m + j, fresh every epoch, each drawn from (seed, id, sample) by `sample_view`."""
    return tuple(epoch * views_per_image + j for j in range(views_per_image))


def distinct_views(epochs: int, num_views: int, start: int = 0, views_per_image: int = 1) -> int:
    """How many different cached views epochs [start, epochs) visit."""
    seen: set[int] = set()
    for e in range(start, epochs):
        seen.update(epoch_view_ids(e, views_per_image, num_views))
    return len(seen)


class EpochSlabs:
    """The view slabs of each epoch's m views, with the next epoch's prefetched.

    Holds the current epoch's slabs plus the next epoch's being read: at most 2m views in
    memory (a view shared by both epochs is read once). A cache of the teacher's eval view
    (`replay=False`) has one view, which every slot uses. `on_load(slab)` runs once per
    slab read (the run checks its values there).
    """

    def __init__(
        self,
        reader: Any,
        num_views: int,
        k: int | None,
        views_per_image: int = 1,
        replay: bool = True,
        on_load: Callable[[Any], None] | None = None,
        pending: dict[int, Future] | None = None,
    ) -> None:
        """`pending`: views already being read ({view: Future of its slab}), e.g. the
        first epoch's, started while the run was checked."""
        self.reader = reader
        self.on_load = on_load
        self.num_views = num_views
        self.k = k
        self.views_per_image = views_per_image
        self.replay = replay
        self._current: dict[int, Any] = {}
        self._pending: dict[int, Future] = dict(pending or {})

    def views_of(self, epoch: int) -> tuple[int, ...]:
        """The cached view of each slot in the epoch (`epoch_view_ids`; all 0 without replay)."""
        if not self.replay:
            return (0,) * self.views_per_image
        return epoch_view_ids(epoch, self.views_per_image, self.num_views)

    def get(self, epoch: int) -> list:
        """The slabs of the epoch's views in slot order (storage.ViewSlab each)."""
        slabs = {}
        for v in self.views_of(epoch):
            if v in slabs:
                continue
            if v in self._current:
                slabs[v] = self._current[v]
            else:
                pending = self._pending.pop(v, None)
                slabs[v] = pending.result() if pending else self.reader.load_view(v, k=self.k)
                if self.on_load is not None:
                    self.on_load(slabs[v])
        self._current = slabs
        return [slabs[v] for v in self.views_of(epoch)]

    def prefetch(self, epoch: int) -> None:
        """Start reading the epoch's views that are not in memory or already on their way."""
        for v in set(self.views_of(epoch)):
            if v not in self._current and v not in self._pending:
                self._pending[v] = self.reader.prefetch(v, k=self.k)


class NoSlabs:
    """The slabs of a run without a cache: there are no targets to load."""

    def __init__(self, views_per_image: int = 1) -> None:
        self.views_per_image = views_per_image

    def views_of(self, epoch: int) -> tuple[int, ...]:
        return own_crop_ids(epoch, self.views_per_image)

    def get(self, epoch: int) -> None:
        return None

    def prefetch(self, epoch: int) -> None:
        return None
