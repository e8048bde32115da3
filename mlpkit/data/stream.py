"""Tables larger than memory: ``data.stream=true`` trains on Parquet files read a record batch at a time.

``data.path`` is a Parquet file, a directory of them or a glob. ``pyarrow.dataset`` opens them (every
file's schema must equal the first's); one pass (mlpkit.data.stream_stats) fits the standardisation,
the fill values and the classes on the training rows; then each epoch reads the row groups in a seeded
order through a bounded shuffle buffer (``data.shuffle_buffer`` rows) and yields the trainer's batches:
memory holds a record batch and the buffer, never the table. Validation and test rows are read in
file order for each evaluation; only their logits and targets are held (4-8 bytes a row and output).

Under ``trainer.strategy=ddp`` each rank reads the row groups dealt to it (a fresh seeded deal each
epoch) and fills its share of every global batch: an epoch is still ceil(rows / batch_size) steps of
the global batch. The deal is by row group, so a rank whose row groups hold fewer rows than its share
of the epoch reads its first ones again, and one with more leaves the rest for a later deal.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from mlpkit.data.missing import INDICATOR_SUFFIX, missing_settings
from mlpkit.data.stream_files import check_stream_keys, open_row_groups, pick_stream_columns, stream_files
from mlpkit.data.stream_stats import StreamStats
from mlpkit.data.stream_table import StreamTable, fitted_table, scan
from mlpkit.errors import DataError

PREFETCH_STEPS = 8  # batches a reading thread prepares ahead of the training step


# --- a split the trainer reads ---------------------------------------------------------------------
@dataclass
class StreamSplit:
    """One split of a streamed table, with the trainer's view of a split (``mlpkit.data.Split``):
    ``len``, ``epoch_order``, ``batches``, ``chunks`` and ``head``."""

    table: StreamTable
    part: int  # 0 train, 1 val, 2 test
    rows: int
    shuffle_buffer: int
    width: int
    group_rows: tuple[int, ...] = ()  # this split's rows per row group (the training split's: for ddp)
    eval_rows: int | None = None  # data.eval_rows: an evaluation reads a uniform sample of about this many
    label_counts: tuple[int, ...] = ()  # rows of each class (a classification split)
    limit: int | None = None  # head(rows): the first rows only

    @property
    def x(self) -> torch.Tensor:
        """No rows: the shape and device a split's features have (the features are read as needed)."""
        return torch.empty(0, self.width)

    @property
    def y(self) -> torch.Tensor:
        """The split's class labels, sorted, from the pass's counts (what loss.class_weights=balanced
        counts: 8 bytes a row, made only when asked); a regression split's targets are read as needed."""
        return torch.repeat_interleave(torch.arange(len(self.label_counts)), torch.tensor(self.label_counts))

    def __len__(self) -> int:
        return self.rows if self.limit is None else min(self.rows, self.limit)

    def epoch_order(self, generator: torch.Generator) -> torch.Tensor:
        """The epoch's seed (a stream is shuffled as it is read: no permutation of its rows is held)."""
        return torch.randint(0, 2 ** 62, (1,), generator=generator)

    def head(self, rows: int) -> StreamSplit:
        return replace(self, limit=rows)

    def chunks(self, rows: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The split's rows in file order, ``rows`` at a time, as tensors on ``device``: every row, or
        with ``eval_rows`` a seeded uniform sample of about that many (what an evaluation reads)."""
        left = len(self)
        rate = 1.0 if self.eval_rows is None or self.limit is not None else min(1.0, self.eval_rows / max(1, self.rows))
        pending_x, pending_y = [], []
        for x, y in self.table.read(list(range(len(self.table.groups))), self.part, rate):
            pending_x.append(x[:left])
            pending_y.append(y[:left])
            left -= len(pending_x[-1])
            while sum(map(len, pending_x)) >= rows or (not left and pending_x):
                x_all, y_all = np.concatenate(pending_x), np.concatenate(pending_y)
                yield to_tensors(x_all[:rows], y_all[:rows], device)
                pending_x, pending_y = ([x_all[rows:]], [y_all[rows:]]) if len(x_all) > rows else ([], [])
            if not left:
                return
        if pending_x:  # a sample's last rows (it holds fewer rows than the split)
            yield to_tensors(np.concatenate(pending_x), np.concatenate(pending_y), device)

    def batches(self, order: torch.Tensor, batch_size: int, first: int, count: int, device: torch.device
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Steps ``first`` to ``count - 1`` of the epoch seeded by ``order``: global batches of
        ``batch_size`` rows (the last smaller); under ddp this rank's share of each is filled with its
        own rows and the rest left zero (the trainer reads only its share)."""
        from mlpkit.distributed import GradientSync, rank, world_size

        ranks, this = world_size(), rank()
        seed = int(order.reshape(-1)[0])
        sizes = [min(batch_size, len(self) - step * batch_size) for step in range(count)]
        sync = GradientSync(ranks, this)
        shares = [sync.share(size) for size in sizes]

        def steps() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            stream = RowStream(self.rank_rows(seed, this, ranks))
            stream.take(sum(share.stop - share.start for share in shares[:first]))  # a resumed epoch's done steps
            for size, share in zip(sizes[first:], shares[first:]):
                x, y = stream.take(share.stop - share.start)
                yield padded(x, y, size, share) if ranks > 1 else (x, y)

        for x, y in prefetched(steps(), PREFETCH_STEPS):
            yield to_tensors(x, y, device)

    def rank_rows(self, seed: int, this: int, ranks: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """This rank's rows of the split, shuffled: its row groups in a seeded order through the
        shuffle buffer, round after round (one round is the whole split in one process)."""
        for cycle in range(1 << 30):
            deal = np.random.default_rng([seed, cycle]).permutation(len(self.table.groups))
            mine = [int(index) for index in deal[this::ranks]]
            if not sum(self.group_rows[index] for index in mine):
                continue  # row groups holding no training row: the next deal gives this rank some
            rng = np.random.default_rng([seed, cycle, this])
            yield from shuffled(self.table.read(mine, self.part), rng, self.shuffle_buffer)


def shuffled(chunks: Iterator[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, buffer: int
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """A bounded shuffle: the first ``buffer`` rows fill a pool; then each arriving row takes the
    place of a pooled row drawn at random, which leaves; at the end the pool leaves, permuted. The
    rows move with torch's index_select and index_copy_, which release the GIL: the training step
    in the main thread runs meanwhile."""
    pool_x = pool_y = None
    filled = 0
    for x, y in chunks:
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        if pool_x is None:
            pool_x, pool_y = x.new_empty((buffer, *x.shape[1:])), y.new_empty((buffer, *y.shape[1:]))
        room = min(buffer - filled, len(x))
        pool_x[filled:filled + room], pool_y[filled:filled + room] = x[:room], y[:room]
        filled += room
        for start in range(room, len(x), buffer):  # the pool is full: rows swap in, rows leave
            arriving = slice(start, min(len(x), start + buffer))
            slots = torch.from_numpy(rng.permutation(buffer)[:arriving.stop - arriving.start])
            yield pool_x.index_select(0, slots).numpy(), pool_y.index_select(0, slots).numpy()
            pool_x.index_copy_(0, slots, x[arriving])
            pool_y.index_copy_(0, slots, y[arriving])
    if filled:
        order = torch.from_numpy(rng.permutation(filled))
        yield pool_x[:filled].index_select(0, order).numpy(), pool_y[:filled].index_select(0, order).numpy()


class RowStream:
    """Rows drawn from a generator of (x, y) chunks, any number at a time."""

    def __init__(self, chunks: Iterator[tuple[np.ndarray, np.ndarray]]):
        self.chunks, self.held = chunks, []

    def take(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys, have = [], [], 0
        while have < rows:
            x, y = self.held.pop() if self.held else next(self.chunks)
            if len(x) > rows - have:
                self.held.append((x[rows - have:], y[rows - have:]))
                x, y = x[:rows - have], y[:rows - have]
            xs.append(x)
            ys.append(y)
            have += len(x)
        return (np.concatenate(xs), np.concatenate(ys)) if xs else (np.zeros((0, 0), np.float32), np.zeros(0))


def padded(x: np.ndarray, y: np.ndarray, size: int, share: slice) -> tuple[np.ndarray, np.ndarray]:
    """A global batch of ``size`` rows holding this rank's rows at ``share`` (the rest zero)."""
    full_x = np.zeros((size, *x.shape[1:]), dtype=x.dtype)
    full_y = np.zeros((size, *y.shape[1:]), dtype=y.dtype)
    if share.stop > share.start:
        full_x[share], full_y[share] = x, y
    return full_x, full_y


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def prefetched(items: Iterator[Any], depth: int) -> Iterator[Any]:
    """``items`` produced by a thread of their own, up to ``depth`` ahead: reading and decoding the
    next batches (pyarrow and numpy release the GIL) overlaps the training step on this one. An
    error in the thread is raised here; leaving the loop early stops the thread. Not torch's
    DataLoader with a worker process: measured against this thread on 1M rows, passing each batch
    between processes made the epoch slower (480-550k against 620-700k samples/s)."""
    import queue
    import threading

    ready: queue.Queue = queue.Queue(maxsize=depth)
    stopped, finished = threading.Event(), object()

    def offer(item: Any) -> bool:
        while not stopped.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(finished)
        except BaseException as error:  # noqa: BLE001 - carried to the consumer, raised there
            offer(_Failed(error))

    threading.Thread(target=produce, name="mlpkit-stream-reader", daemon=True).start()
    try:
        while (item := ready.get()) is not finished:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stopped.set()


def to_tensors(x: np.ndarray, y: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)


# --- the whole ---------------------------------------------------------------------------------------
@dataclass
class OpenedStream:
    table: StreamTable
    splits: tuple[StreamSplit, StreamSplit, StreamSplit]
    feature_names: list[str]
    class_names: list[str]
    extra: dict[str, Any]


def open_stream(cfg: Mapping[str, Any]) -> OpenedStream:
    """data.stream=true: the files opened, checked and scanned once (by rank 0 of a ddp run, which
    sends what it found to the others), and the three splits ready to read."""
    from mlpkit import distributed
    from mlpkit.data.columns import label

    check_stream_keys(cfg)
    files = stream_files(cfg.get("path"))
    groups, schema = open_row_groups(files)
    names, target = pick_stream_columns(schema, cfg.get("target"), cfg.get("features"))
    strategy = missing_settings(cfg.get("missing", "error"), cfg.get("fill_value", 0.0),
                                cfg.get("missing_indicator", False), cfg.get("missing_values")).strategy
    seed = int(cfg.get("split_seed", 0))
    fractions = (float(cfg.get("val_fraction", 0.15)), float(cfg.get("test_fraction", 0.15)))

    def scanned() -> StreamStats:
        return scan(groups, names, target, seed, fractions, strategy, strategy in ("median", "most_frequent"))

    stats = distributed.broadcast_object(scanned() if distributed.writes_files() else None) \
        if distributed.started() else scanned()
    table = fitted_table(groups, names, target, cfg, stats)
    indicators = list(table.missing.get("indicators") or [])
    width = len(names) + len(indicators)
    buffer = int(cfg.get("shuffle_buffer", 100_000))
    eval_rows = cfg.get("eval_rows", 200_000)
    splits = tuple(StreamSplit(table, part, stats.rows[part], buffer, width,
                               tuple(stats.group_train_rows) if part == 0 else (), eval_rows,
                               tuple(stats.classes[part][value] for value in table.classes)) for part in range(3))
    class_names = [cls if isinstance(cls, str) else label(float(cls)) for cls in table.classes]
    extra = {"path": str(cfg.get("path")), "target": target, "input_columns": names, "categories": {},
             "missing": dict(table.missing), "stream": {"files": len(files), "row_groups": len(groups),
                                                        "shuffle_buffer": buffer, "eval_rows": eval_rows}}
    return OpenedStream(table, splits, [*names, *(f"{name}{INDICATOR_SUFFIX}" for name in indicators)],
                        class_names, extra)


def check_stream_ranks(split: Any, ranks: int) -> None:
    """Each rank of a streamed ddp run reads row groups of its own: there must be one a rank at least."""
    if isinstance(split, StreamSplit) and len(split.table.groups) < ranks:
        raise DataError("data.path", split.table.groups[0].file, f"{len(split.table.groups)} row groups for "
                        f"{ranks} ranks: each rank reads row groups of its own; write the table in more row groups "
                        "(pyarrow.parquet.write_table(row_group_size=...)) or start fewer ranks")
