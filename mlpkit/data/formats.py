"""Table files chosen by suffix and read through pyarrow: CSV and TSV (plain or .gz/.bz2/.xz),
Parquet, Feather. pyarrow is imported inside the functions, so runs on bundled data never load it.

A file is read column-wise and multi-threaded; the slow Python reader (mlpkit.data.delimited)
runs only to explain a file pyarrow refuses, and ``TableFile.cell`` finds a row's line and text only
for an error message.
"""
from __future__ import annotations

import lzma
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlpkit.data import delimited
from mlpkit.errors import DataError

PARQUET = (".parquet", ".pq")
FEATHER = (".feather", ".arrow", ".ipc")
SUFFIXES = ".csv, .tsv (plain or .gz/.bz2/.xz), .parquet, .feather"
# Text per CSV batch: 1/1024 of the file, between 64 KiB and pyarrow's default 1 MiB (see block_bytes).
MIN_BLOCK_BYTES, MAX_BLOCK_BYTES = 64 << 10, 1 << 20
# Cells that mean "no value" in a run saved before data.missing_values (pyarrow compares them
# case-sensitively; the messages lower-case them). A training table's are data.missing_values.
NULLS = ["", "na", "NA", "Na", "n/a", "N/A", "nan", "NaN", "NAN", "Nan", "null", "NULL", "Null"]


def table_kind(file: Path) -> str:
    """"text", "parquet" or "feather", from the file's suffix (anything else is read as text)."""
    suffixes = [s.lower() for s in file.suffixes]
    if suffixes and suffixes[-1] in PARQUET:
        return "parquet"
    if suffixes and suffixes[-1] in FEATHER:
        return "feather"
    return "text"


def default_delimiter(file: Path, delimiter: str) -> str:
    """A .tsv file (compressed or not) is tab-separated unless another delimiter than "," is set."""
    suffixes = [s.lower() for s in file.suffixes if s.lower() not in delimited.COMPRESSIONS]
    return "\t" if suffixes and suffixes[-1] == ".tsv" and delimiter == "," else delimiter


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


@dataclass
class TableFile:
    """One table file and the keys its messages name (data.path, data.test_path, input ...);
    ``missing_values``: the cells of a text file that read as missing (null)."""

    file: Path
    key: str = "data.path"
    delimiter: str = ","
    delimiter_key: str = "data.delimiter"
    missing_values: list[str] = field(default_factory=lambda: list(NULLS))

    def __post_init__(self) -> None:
        self.kind = table_kind(self.file)
        self.delimiter = default_delimiter(self.file, self.delimiter)
        # pyarrow cuts text into blocks at line ends, fast, unless told that a quoted cell may hold
        # a line break; set once such a cut has failed (see read)
        self.newlines_in_values = False

    def fail(self, problem: str) -> DataError:
        return DataError(self.key, self.file, problem)

    # --- reading ----------------------------------------------------------------------------
    def schema(self) -> Any:
        """The column names and types (for text, inferred from the first block), header checked."""
        import pyarrow as pa  # pyarrow: only table files need it

        try:
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                schema = pq.read_schema(self.file)
            elif self.kind == "feather":
                schema = pa.ipc.open_file(self.file).schema
            else:
                csv_module = self._csv_module()  # the cells read as missing leave a column's type alone
                convert = csv_module.ConvertOptions(null_values=list(self.missing_values), strings_can_be_null=True)
                with self._source() as source, \
                        csv_module.open_csv(source, convert_options=convert, **self._csv_options()) as reader:
                    schema = reader.schema
        except (pa.ArrowException, OSError) as error:
            if self.allow_newlines_in_values(error):
                return self.schema()
            raise self._unreadable(error) from None
        self.check_header(list(schema.names))
        return schema

    def read(self, columns: Sequence[str], text_types: dict[str, Any] | None = None) -> Any:
        """The named columns as a pyarrow Table; ``text_types`` forces the types of a text file's
        columns (float32 for numbers: parsed straight into the width the tensors hold)."""
        import pyarrow as pa

        try:
            if self.kind == "parquet":
                import pyarrow.parquet as pq

                table = pq.read_table(self.file, columns=list(columns))
            elif self.kind == "feather":
                import pyarrow.feather as feather

                table = feather.read_table(self.file, columns=list(columns))
            else:
                csv_module = self._csv_module()
                convert = csv_module.ConvertOptions(
                    include_columns=list(columns), column_types=text_types or {},
                    null_values=list(self.missing_values),
                    strings_can_be_null=True, quoted_strings_can_be_null=True)
                # The streaming reader holds a few blocks of text at a time; read_csv parses the
                # whole file at once and peaks at several times the table's size.
                with self._source() as source, \
                        csv_module.open_csv(source, convert_options=convert, **self._csv_options()) as reader:
                    table = reader.read_all()
        except (pa.ArrowException, OSError) as error:
            if self.allow_newlines_in_values(error):
                return self.read(columns, text_types)
            if self.kind == "text" and text_types and "conversion error" in str(error):
                # A column typed from the first block holds other cells further down: read it as text
                # and let the caller name the cell.
                return self.read(columns, {name: pa.string() for name in columns})
            raise self._unreadable(error) from None
        if table.num_rows == 0:
            raise self.fail("has a header but no data rows" if self.kind == "text" else "holds no rows")
        self.check_types(table.schema, columns)
        return table

    def batches(self, columns: Sequence[str], text_types: dict[str, Any]) -> Any:
        """The named columns as pyarrow record batches, read a few at a time: Parquet row groups,
        Feather record batches, or a text file's blocks (``block_bytes``) parsed as ``text_types``
        (cells in ``missing_values`` are nulls). Close it when done if it has ``close``."""
        import pyarrow as pa

        columns = list(columns)
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.file).iter_batches(columns=columns)
        if self.kind == "feather":
            reader = pa.ipc.open_file(self.file)
            return (reader.get_batch(i).select(columns) for i in range(reader.num_record_batches))
        csv_module = self._csv_module()
        convert = csv_module.ConvertOptions(include_columns=columns, column_types=text_types,
                                            null_values=list(self.missing_values), strings_can_be_null=True)
        return csv_module.open_csv(self._source(), convert_options=convert, **self._csv_options())

    def check_types(self, schema: Any, columns: Sequence[str]) -> None:
        """One line for a column whose cells hold several values (Parquet or Feather lists, structs,
        maps, unions): a cell must be one number or text value."""
        import pyarrow as pa

        for name in columns:
            kind = schema.field(name).type
            if pa.types.is_nested(kind.value_type if pa.types.is_dictionary(kind) else kind):
                leave_out = ", or choose other columns (data.features, data.target)" if self.key.startswith("data.") else ""
                raise self.fail(f"column '{name}' holds {kind} values; mlpkit reads one number or text value "
                                f"per cell: spread its values over columns of their own{leave_out}")

    def allow_newlines_in_values(self, error: BaseException) -> bool:
        """True (and set for every later read) when ``error`` is pyarrow's block cut landing inside a
        quoted cell that holds a line break: the file is then read with the slower cut that allows them."""
        if self.kind != "text" or self.newlines_in_values or "newlines_in_values" not in str(error):
            return False
        self.newlines_in_values = True
        return True

    def _source(self) -> Any:
        """The text file as a byte stream: pyarrow decompresses .gz and .bz2 itself (pyarrow wheels
        have no xz codec: Python's lzma reads those)."""
        import pyarrow as pa

        if self.file.suffix.lower() == ".xz":
            return lzma.open(self.file, "rb")
        return pa.input_stream(self.file, compression="detect")

    def _csv_module(self) -> Any:
        import pyarrow.csv

        return pyarrow.csv

    def _csv_options(self) -> dict[str, Any]:
        csv_module = self._csv_module()
        header = self._header()
        names = {}
        if any(name != name.strip() for name in header):  # "x, color, label": the names without their spaces
            names = {"column_names": [name.strip() for name in header], "skip_rows": 1}
        return {"parse_options": csv_module.ParseOptions(delimiter=self.delimiter,
                                                          newlines_in_values=self.newlines_in_values),
                "read_options": csv_module.ReadOptions(block_size=self.block_bytes(), **names)}

    def block_bytes(self) -> int:
        """Text per CSV batch: 1/1024 of the file, between 64 KiB and 1 MiB. pyarrow's stream reader
        reads up to 32 blocks ahead in its I/O thread and parses ahead of that: about 50 blocks in
        memory from the moment it opens (50 MiB at its default 1 MiB, as much as a 200k-row table's
        tensors). At 1/1024 of the file that stays near a twentieth of the file (an eighth of its float32
        values), and a file under 1 GiB is read in about 1024 batches whatever its size."""
        return int(min(MAX_BLOCK_BYTES, max(MIN_BLOCK_BYTES, self.file.stat().st_size // 1024)))

    def _header(self) -> list[str]:
        """The text file's first row, split as Python's csv module splits it."""
        if not hasattr(self, "_first_row"):
            self._first_row = delimited.first_row(self.file, self.delimiter)
        return self._first_row

    def _unreadable(self, error: BaseException) -> DataError:
        """The file's first problem in one line: for text, the Python reader finds it by line."""
        if self.kind == "text":
            delimited.read_rows(self.file, self.delimiter, self.key, self.delimiter_key)  # raises the exact line
            return self.fail(f"cannot be read as delimited text: {first_line(error)}")
        return self.fail(f"cannot be read as {self.kind.capitalize()} ({first_line(error)}); "
                         f"table files are chosen by suffix: {SUFFIXES}")

    def check_header(self, header: list[str]) -> None:
        delimited.check_header(self.file, header, self.delimiter, self.key, self.delimiter_key)

    # --- messages ---------------------------------------------------------------------------
    def cell(self, row: int, column: str) -> tuple[str, str]:
        """Where data row ``row`` (0-based) is ("line 4" for text, "row 3" otherwise) and the cell's
        text in ``column``; read again from the file, for an error message only."""
        if self.kind != "text":
            value = self.read([column]).column(column)[row].as_py()
            return f"row {row + 1}", "" if value is None else str(value)
        for index, (line, header, cells) in enumerate(delimited.data_rows(self.file, self.delimiter)):
            if index == row:
                return f"line {line}", cells[header.index(column)]
        return f"row {row + 1}", ""
