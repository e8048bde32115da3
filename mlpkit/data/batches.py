"""The common case at scale, read batch by batch: every feature column numeric, no categories.

Each file is streamed (pyarrow's CSV stream reader, Parquet row groups, Feather record batches);
each batch's feature columns go into a float32 block of their own, centred in float64 first and the pyarrow batch is dropped,
so the whole table never sits in memory twice. The blocks are then copied into the final array,
each freed as soon as it is copied. Anything unusual (a text column, a null unless a data.missing
fill strategy keeps it as NaN, a value float32 cannot hold, a cell that breaks the first block's
types) returns None: the column-wise path (mlpkit.data.columns) reads the files again and names the cell.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from mlpkit.data.formats import TableFile
from mlpkit.data.precision import FLOAT32_MAX, SAMPLE_ROWS, offsets_of

BLOCK_ROWS_BYTES = 64 << 20  # float32 features gathered per block before the final copy


def numeric_batches(table_file: TableFile, names: Sequence[str], target: str) -> Iterator[Any] | None:
    """Record batches holding ``names`` (all numeric) and ``target``; None if a column is not numeric."""
    import pyarrow as pa

    schema = table_file.schema()
    if any(name not in schema.names for name in [*names, target]):
        return None
    table_file.check_types(schema, [*names, target])
    kinds = [schema.field(name).type for name in names]
    if not all(pa.types.is_integer(k) or pa.types.is_floating(k) for k in kinds):
        return None
    target_kind = schema.field(target).type
    text_types = {**{name: pa.float64() for name in names},  # float64: centred before the float32 cast
                  target: pa.float64() if pa.types.is_integer(target_kind) or pa.types.is_floating(target_kind)
                  else pa.string()}
    return table_file.batches([*names, target], text_types)


def read_numeric(files: Sequence[TableFile], names: Sequence[str], target: str, allow_missing: bool = False
                 ) -> tuple[np.ndarray, list[Any], np.ndarray, np.ndarray] | None:
    """(N, F) float32 features of every file, stacked, each file's target column (pyarrow), the
    float64 offsets subtracted from the features before their float32 cast (fitted on the first
    batch's first rows) and those rows in float64; or None when the column-wise path must take over.
    ``allow_missing``: a missing cell (null or NaN) is NaN, for mlpkit.data.missing to fill."""
    import pyarrow as pa

    # Blocks of 64 MiB: above glibc's largest mmap threshold (32 MiB), so each one is returned to
    # the system when freed, and the final array's pages replace them rather than add to them.
    capacity = max(1, BLOCK_ROWS_BYTES // (4 * max(1, len(names))))
    blocks: list[np.ndarray] = []
    targets: list[Any] = []
    used = capacity
    offsets = sample = None
    for table_file in files:
        batches = numeric_batches(table_file, names, target)
        if batches is None:
            return None
        chunks = []
        try:
            for batch in batches:
                for start in range(0, batch.num_rows, capacity):
                    piece = batch.slice(start, capacity)
                    if used + piece.num_rows > capacity:
                        if blocks:
                            blocks[-1] = blocks[-1][:used]
                        blocks.append(np.empty((capacity, len(names)), dtype=np.float32))
                        used = 0
                    if offsets is None and piece.num_rows:
                        offsets, sample = first_rows(piece, len(names))
                    if not fill_block(blocks[-1][used:used + piece.num_rows], piece, offsets, allow_missing):
                        return None
                    used += piece.num_rows
                chunks.append(batch.column(len(names)))
        except (pa.ArrowException, OSError):
            return None  # e.g. a text cell below the first block: the column-wise path names it
        finally:
            if hasattr(batches, "close"):
                batches.close()
        if not chunks:
            return None
        targets.append(pa.table({target: pa.chunked_array(chunks)}))
    if blocks:
        blocks[-1] = blocks[-1][:used]
    if len(blocks) == 1:  # one block holds it all: no copy (its untouched tail takes no memory)
        return blocks[0], targets, offsets, sample
    values = np.empty((sum(len(block) for block in blocks), len(names)), dtype=np.float32)
    start = 0
    blocks.reverse()
    while blocks:  # copy, then free, block by block: the final array grows as the blocks go
        block = blocks.pop()
        values[start:start + len(block)] = block
        start += len(block)
        del block
    return values, targets, offsets, sample


def first_rows(piece: Any, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Each feature column's offset (mlpkit.data.precision) and the first rows, in float64."""
    sample = np.stack([np.asarray(piece.column(position).slice(0, SAMPLE_ROWS).to_numpy(zero_copy_only=False),
                                  dtype=np.float64) for position in range(width)], axis=1)
    return offsets_of(sample), sample


def fill_block(rows: np.ndarray, piece: Any, offsets: np.ndarray, allow_missing: bool = False) -> bool:
    """Write a record batch's feature columns, less their offsets, into float32 ``rows``; False at a
    value float32 cannot hold or (unless ``allow_missing``: NaN) a missing cell (the column-wise path
    names its cell)."""
    for position in range(rows.shape[1]):
        column = piece.column(position)
        if column.null_count and not allow_missing:
            return False
        part = np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)  # a null: NaN
        if not (np.abs(part) <= FLOAT32_MAX).all() and (not allow_missing or (np.abs(part) > FLOAT32_MAX).any()):
            return False
        rows[:, position] = part - offsets[position]
    return True
