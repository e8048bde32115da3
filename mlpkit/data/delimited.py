"""Delimited text read by Python's csv module: the slow reader that explains, by line, a text file
pyarrow refuses (bad encoding, a row's field count, a header), and finds a row's line and cells for
an error message. Tables are read through pyarrow (mlpkit.data.formats), which calls on this module;
it imports nothing of the data package.
"""
from __future__ import annotations

import bz2
import csv
import gzip
import lzma
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mlpkit.errors import DataError

COMPRESSIONS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
Row = tuple[int, list[str]]  # (line number in the file, cells)


def open_text(file: Path) -> IO[str]:
    """The file as text, decompressed by suffix (a UTF-8 byte-order mark is skipped)."""
    opener = COMPRESSIONS.get(file.suffix.lower(), open)
    return opener(file, "rt", newline="", encoding="utf-8-sig")


def first_row(file: Path, delimiter: str) -> list[str]:
    """The text file's first row, split as Python's csv module splits it."""
    with open_text(file) as handle:
        return next(csv.reader(handle, delimiter=delimiter), [])


def data_rows(file: Path, delimiter: str) -> Iterator[tuple[int, list[str], list[str]]]:
    """(line number, header, cells) of each data row; blank lines hold no data (pyarrow skips them too)."""
    with open_text(file) as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = [name.strip() for name in next(reader, [])]
        for cells in reader:
            if cells:
                yield reader.line_num, header, cells


def read_rows(file: Path, delimiter: str, key: str = "data.path",
              delimiter_key: str = "data.delimiter") -> tuple[list[str], list[Row]]:
    """The header and the data rows with their line numbers, read by Python's csv module: the
    slow reader that explains a text file pyarrow refuses (bad encoding, a row's field count).

    ``key`` and ``delimiter_key`` are the settings named in the errors (for training, data.path and
    data.delimiter; for prediction, input and delimiter).
    """
    rows: list[Row] = []
    try:
        with open_text(file) as handle:
            reader = csv.reader(handle, delimiter=delimiter)
            header = [name.strip() for name in next(reader, [])]
            rows = [(reader.line_num, row) for row in reader if row]  # blank lines hold no data
    except UnicodeDecodeError as error:
        raise DataError(key, file, f"is not UTF-8 text ({error.reason} at byte "
                        f"{error.start})") from None
    except csv.Error as error:
        raise DataError(key, file, f"line {reader.line_num}: {error}") from None
    except (OSError, EOFError) as error:  # a truncated or mislabelled .gz/.bz2/.xz
        raise DataError(key, file, f"cannot be read: {error}") from None
    check_header(file, header, delimiter, key, delimiter_key)
    if not rows:
        raise DataError(key, file, "has a header but no data rows")
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(key, file, f"line {line} has {len(row)} fields, the header has "
                            f"{len(header)}")
    return header, rows


def check_header(file: Path, header: list[str], delimiter: str, key: str = "data.path",
                 delimiter_key: str = "data.delimiter") -> None:
    """Every column named once, and a header that does not read as one column by mistake."""
    if not header:
        raise DataError(key, file, "is empty: expected a header line naming the columns")
    other = next((sep for sep in (",", ";", "\t", "|") if sep in header[0] and sep != delimiter), None)
    if len(header) == 1 and other is not None:
        shown = "'\\t'" if other == "\t" else repr(other)
        raise DataError(delimiter_key, repr(delimiter), f"{file} line 1 reads as one column "
                        f"{header[0]!r}; set {delimiter_key}={shown} to split it")
    for position, name in enumerate(header, start=1):
        if not str(name).strip():
            raise DataError(key, file, f"line 1: column {position} has no name")
        if header.index(name) != position - 1:
            raise DataError(key, file, f"line 1: column '{name}' appears twice")
