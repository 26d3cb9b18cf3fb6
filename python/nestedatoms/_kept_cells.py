"""The cells of a dask fit kept in the workers' memory between passes, when they fit.

A dask fit reads every cell from the store in every pass (every sweep, every move's map).
At OneK1K's size (1.27 M cells, 0.3 GB) that read was a third to a half of the sweep: zarr's
read path through dask costs ~6x a raw read of the same chunk files, and the compute of a
sweep there is under a second.  So when the cells take a small share of the workers' memory,
each batch is read once, by one task placed on a worker (round robin over the workers, so
they hold the same number of batches), kept there as a future, and every later task of that
batch is asked to run where its rows are (a loose restriction: a worker that died is replaced,
its batches read again from the store by dask, and the task runs where they are).

The rows are the same float64 numbers either way, so are the bits.  The choice is made once
per fit from the active scheduler:

* ``dask.config`` key ``nestedatoms.keep-cells``: ``"auto"`` (default), ``True`` (keep
  whatever the memory) or ``False`` (read from the store every pass, as before).  As every
  dask setting it can also come from the environment: ``DASK_NESTEDATOMS__KEEP_CELLS=False``.
* ``"auto"`` keeps the cells when they take at most ``KEEP_FRACTION`` of the workers' memory
  (the sum of their memory limits, a host's memory counted once for workers without a
  limit), with a ``distributed.Client`` or dask's local threads (in this process); with the
  local process scheduler they are read every pass (kept here, they would be sent to the
  processes with every task).

The fitted model lets the cells go at the end of the fit (``DaskData.release_cells``): a
later ``resume`` keeps them again for its own passes.
"""

from __future__ import annotations

import uuid

import numpy as np

__all__ = ["KEEP_FRACTION", "CONFIG_KEY", "active_client", "keep_cells", "keep", "map_kept"]

# At most this share of the workers' memory goes to the kept cells: the rest is the workers'
# room for each batch's xi and the scheduler's data, well below distributed's thresholds
# (spill at 60%, pause at 80%).  A cohort whose cells take a large share of the memory is what
# the store path is for (10x OneK1K, 2.8 GiB of cells on a 23.5 GiB machine, peaks at 1.3 GB
# read from the store; kept, it would be about 4.3 GB).
KEEP_FRACTION = 0.1
CONFIG_KEY = "nestedatoms.keep-cells"


def active_client():
    """The ``distributed.Client`` dask's computations run on now, or None."""
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    import dask.base

    return client if dask.base.get_scheduler() == client.get else None


def _in_process_scheduler() -> bool:
    """Whether dask runs here on threads (or synchronously): what it does without a client
    unless told otherwise."""
    import dask
    import dask.base
    import dask.local
    import dask.threaded

    return dask.base.get_scheduler(collections=[dask.delayed(0)]) in (
        dask.threaded.get, dask.local.get_sync)


def _host_memory() -> int:
    """Memory of this host (a cgroup's limit if lower), bytes."""
    try:
        from distributed.system import MEMORY_LIMIT

        return int(MEMORY_LIMIT)
    except ImportError:
        import os

        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _workers_memory(client) -> int:
    """The workers' memory: their limits summed, a host's memory counted once for the
    workers on it that have no limit (``memory_limit=0``), and never more than the host's."""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    totals = client.run(_host_memory)
    hosts: dict = {}
    for addr, info in workers.items():
        total = int(totals.get(addr, 0))
        limit = int(info.get("memory_limit") or 0) or total
        host = info.get("host", addr)
        cap, claimed, unlimited = hosts.get(host, (total, 0, False))
        if info.get("memory_limit"):
            claimed += limit
        else:
            unlimited = True
        hosts[host] = (cap, claimed, unlimited)
    return sum(cap if unlimited else min(cap, claimed) for cap, claimed, unlimited in
               hosts.values())


def keep_cells(nbytes: int, client) -> bool:
    """Whether to keep cells of ``nbytes`` in memory (module docstring)."""
    import dask

    setting = dask.config.get(CONFIG_KEY, "auto")
    if isinstance(setting, str):        # as written in a YAML file or the environment
        setting = {"true": True, "false": False}.get(setting.lower(), setting.lower())
    if setting is False:
        return False
    if client is None and not _in_process_scheduler():
        return False
    if setting is True:
        return True
    if setting != "auto":
        raise ValueError(f"dask config {CONFIG_KEY!r} must be 'auto', True or False, got "
                         f"{setting!r}.")
    memory = _workers_memory(client) if client is not None else _host_memory()
    return nbytes <= KEEP_FRACTION * memory


def _read_kept(reader) -> np.ndarray:
    """A batch's rows read from the store into an array of their own (kept: not a thread's
    reused buffer)."""
    import dask.array as da

    out = np.empty(reader.rows.shape, dtype=np.float64)
    da.store(reader.rows, out, lock=False, scheduler="sync")
    return out


class KeptCells:
    """The batches' rows held as futures on the workers (with a client), or as arrays here."""

    def __init__(self, readers, client):
        self.client = client
        if client is None:
            self.blocks = [_read_kept(r) for r in readers]
            return
        info = client.scheduler_info(n_workers=-1)["workers"]
        workers = sorted(info)
        self.threads = {w: int(info[w].get("nthreads", 1) or 1) for w in workers}
        token = uuid.uuid4().hex
        self.blocks = [client.submit(_read_kept, r, key=f"nestedatoms-cells-{token}-{b}",
                                     **_near(workers[b % len(workers)] if workers else None))
                       for b, r in enumerate(readers)]
        # read now: the first pass's tasks are then placed by where the rows are, as every
        # later pass's (placed before the rows existed, some ran elsewhere and fetched them)
        from distributed import wait

        wait(self.blocks)

    def release(self) -> None:
        if self.client is not None:
            self.client.cancel(self.blocks)
        self.blocks = []


def _near(worker) -> dict:
    """``submit``'s arguments that ask for ``worker`` (or any worker, if None or gone)."""
    return {} if worker is None else dict(workers=[worker], allow_other_workers=True)


def keep(readers, nbytes: int):
    """``KeptCells`` of the batches' ``readers`` if they are to be kept, else None."""
    client = active_client()
    return KeptCells(readers, client) if keep_cells(nbytes, client) else None


def _tasks_per_thread(holders: dict, keys, threads: dict) -> list:
    """The batches cut into tasks: each worker's batches (in batch order) in as many runs as
    it has threads; a batch whose rows are not held (lost with a worker, being read again)
    is a task of its own.  Lists of batch indices, one per task, and the worker to run it."""
    per_worker: dict = {}
    loose = []
    for b, key in enumerate(keys):
        where = holders.get(key, ())
        if where:
            per_worker.setdefault(where[0], []).append(b)
        else:
            loose.append(([b], None))
    tasks = []
    for worker, batches in per_worker.items():
        n = max(1, min(threads.get(worker, 1), len(batches)))
        tasks += [(list(run), worker) for run in np.array_split(batches, n)]
    return tasks + loose


def map_kept(kept: KeptCells, call_each, func, per_batch, common) -> list:
    """``call_each(func, blocks, args, common)`` over the kept batches, the results in batch
    order.  With a client: one task per worker thread, on the worker that holds its batches
    (loosely: elsewhere if that worker is gone), which runs them in batch order; 24 tasks of
    a OneK1K sweep on 2 workers cost 0.06-0.10 s of scheduling and result transfers, 2 tasks
    0.02-0.03 s.  The results are per batch either way, added in batch order by the caller,
    so the grouping changes no bit."""
    import dask

    if kept.client is None:
        shared = dask.delayed(common, pure=True, traverse=False)
        tasks = [dask.delayed(call_each)(func, [block], [args], shared)
                 for block, args in zip(kept.blocks, per_batch)]
        return [r[0] for r in dask.compute(*tasks)]
    client = kept.client
    holders = client.who_has(kept.blocks)
    # the arguments common to all batches (the global factors of a sweep) go to every worker
    # once, not with every task
    shared = _shared(client, common)
    runs = _tasks_per_thread(holders, [b.key for b in kept.blocks], kept.threads)
    futures = [client.submit(call_each, func, [kept.blocks[b] for b in run],
                             [per_batch[b] for b in run], shared, pure=False, **_near(worker))
               for run, worker in runs]
    out = [None] * len(per_batch)
    for (run, _), results in zip(runs, client.gather(futures)):
        for b, result in zip(run, results):
            out[b] = result
    return out



def _shared(client, value):
    """``value`` as one future that tasks on every worker read (fetched once per worker).

    A task, not a scatter: dask does not retry a scatter when a worker dies while it runs (it
    raised a closed connection or waited forever in the worker-killed test), while a task
    whose worker dies is run again elsewhere from its spec, which holds ``value``."""
    return client.submit(_identity, value, pure=False)


def _identity(value):
    return value
