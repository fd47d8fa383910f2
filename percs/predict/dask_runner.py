"""Independent block tasks on dask: its local threaded scheduler, or a dask.distributed cluster.

    with DaskRunner(scheduler="tcp://10.0.0.5:8786") as runner:     # None: the local scheduler, `workers` threads
        shared = runner.share(inputs)                               # sent to every worker once
        results = runner.map(task, items, shared, desc="blocks")   # task(item, shared) for each item, in order

A task that fails stops the run and its exception is raised here (what finished before stays done: the
tasks of percs write their results to disk themselves).
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any, Callable, Sequence


class DaskRunner:
    """scheduler: None for dask's local threaded scheduler with `workers` threads; the address of a
    dask.distributed scheduler ("tcp://host:8786"); or a distributed.Client (not closed by the runner)."""

    def __init__(self, scheduler=None, workers: int = 1, progress: bool = True):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.workers = workers
        self.progress = progress
        self.client = None
        self._owns_client = False
        if scheduler is not None:
            from distributed import Client

            if isinstance(scheduler, Client):
                self.client = scheduler
            else:
                try:
                    self.client = Client(str(scheduler), timeout="20s")
                except (OSError, TimeoutError) as error:
                    raise ValueError(f"dask scheduler {scheduler}: cannot connect ({error})") from None
                self._owns_client = True

    def __enter__(self) -> "DaskRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_client:
            self.client.close()
            self._owns_client = False

    @property
    def distributed(self) -> bool:
        return self.client is not None

    def share(self, value: Any) -> Any:
        """A handle on value for `map`'s tasks: on a cluster, value is sent to every worker once."""
        if self.client is None:
            return value
        return self.client.scatter(value, broadcast=True, hash=False)

    def map(self, task: Callable[[Any, Any], Any], items: Sequence, shared: Any = None, desc: str = "") -> list:
        """[task(item, shared) for item in items], run by dask, with a progress bar over the items."""
        if not items:
            return []
        bar = _bar(len(items), desc, self.progress)
        try:
            if self.client is None:
                return self._map_local(task, items, shared, bar)
            return self._map_distributed(task, items, shared, bar)
        finally:
            bar.close()

    def _map_local(self, task, items, shared, bar) -> list:
        import dask
        from dask.callbacks import Callback

        # The task and its arguments travel inside a partial, which dask neither hashes nor walks into.
        delayed = [dask.delayed(partial(task, item, shared), pure=False)() for item in items]
        keys = {d.key for d in delayed}

        class Progress(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                if key in keys:
                    bar.update(1)

        with Progress():
            return list(dask.compute(*delayed, scheduler="threads", num_workers=self.workers))

    def _map_distributed(self, task, items, shared, bar) -> list:
        from distributed import as_completed

        futures = [self.client.submit(task, item, shared, pure=False) for item in items]
        try:
            for future in as_completed(futures):
                if future.status == "error":
                    future.result()  # raises the task's exception
                bar.update(1)
            return self.client.gather(futures)
        finally:
            for future in futures:
                future.cancel()


def _bar(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="block", disable=not enabled, file=sys.stderr)
