"""Reading rows from files, directories and the hub (tasks/preference.py parses and validates them).

A .csv file (a header row, then one row per line; quoted cells may span lines) is read with pyarrow, already the
parquet reader here, which infers each column's type, so numeric rating columns arrive as numbers;
`datasets.load_dataset("csv", ...)` would also write a cache copy of the file. A csv holds text cells: the
standard, standard_implicit_prompt and prompt-only formats fit it, message lists do not.

Bytes that are not UTF-8 and JSON lines that do not parse become `Unparsed` rows, so that `data.bad_rows`
decides whether they stop the run (naming file, row and line) or are skipped; a JSON document that does not
parse as a whole is one error naming its line and column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.data import DataError

FILE_TYPES = (".parquet", ".jsonl", ".json", ".csv")


def read_rows(source: str, split: str) -> tuple[list[dict], str]:
    """Raw rows and a human-readable origin name.

    `source` is a .parquet/.jsonl/.json/.csv file; or a directory, where the file whose stem is `split` is used
    (<split>.parquet, .jsonl, .json, .csv), else hub-style parquet shards (<split>-*.parquet or <split>/*.parquet
    anywhere below), else a `datasets` save_to_disk directory; or else a hub id, loaded with
    `datasets.load_dataset(source, split=split)`. A .json file may hold a list of rows, a mapping
    {split: rows}, or JSON lines. Lines of a JSON-lines file that do not parse become malformed rows
    (handled by `tasks.preference.parse_pairs` under its bad_rows policy); blank lines are ignored.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_dir(path, split)
    if path.is_file():
        return _read_file(path, split), str(path)
    if path.suffix in FILE_TYPES or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise DataError(f"data file or directory not found: {path}")
    return _read_hub(source, split)


def _read_dir(path: Path, split: str) -> tuple[list[dict], str]:
    for ext in FILE_TYPES:
        f = path / f"{split}{ext}"
        if f.is_file():
            return _read_file(f, split), str(f)
    shards = sorted(set(path.rglob(f"{split}-*.parquet")) | set(path.rglob(f"{split}/*.parquet")))
    if shards:
        return [r for s in shards for r in _read_file(s, split)], f"{path} ({split} parquet shards)"
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        import datasets
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise DataError(f"{path}: saved DatasetDict has no split {split!r} (has {', '.join(ds)})")
            ds = ds[split]
        return ds.to_list(), f"{path} [{split}]"
    raise DataError(f"{path}: no data for split {split!r}: expected {split}.parquet, {split}.jsonl, "
                    f"{split}.json, {split}.csv, parquet shards named {split}-*.parquet, or a datasets save_to_disk "
                    f"folder")


def _read_file(path: Path, split: str) -> list:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq
        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise DataError(f"{path}: not a readable parquet file: {e}") from e
    if path.suffix == ".csv":
        return _read_csv(path)
    if path.suffix not in (".jsonl", ".json"):
        raise DataError(f"{path}: unsupported file type {path.suffix!r}; use .parquet, .jsonl, .json or .csv")
    raw = path.read_bytes()
    if path.suffix == ".json" and raw.strip():
        try:
            return _json_rows(json.loads(raw.decode("utf-8")), path, split)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            if not _first_line_is_json(raw):  # else: JSON lines (datasets' to_json writes them into .json too)
                raise _document_error(raw, path, e) from None
    return [_json_line(n, line) for n, line in enumerate(raw.split(b"\n"), 1) if line.strip()]


def _read_csv(path: Path) -> list[dict]:
    import pyarrow
    import pyarrow.csv as pcsv
    if not path.read_bytes().strip():
        return []  # an empty file: no rows (pyarrow would call it an error)
    try:  # quoted cells may hold line breaks, as csv writers (pandas, Python's csv) write multi-line text
        return pcsv.read_csv(path, parse_options=pcsv.ParseOptions(newlines_in_values=True)).to_pylist()
    except pyarrow.ArrowInvalid as e:  # a row with the wrong number of cells, text that is not UTF-8, ...
        raise DataError(f"{path}: not a readable csv file: {e}") from e


class Unparsed(str):
    """Placeholder row for a JSON line that does not decode or parse; the string says why."""


def _first_line_is_json(raw: bytes) -> bool:
    first = next((line for line in raw.split(b"\n") if line.strip()), b"")
    try:
        return isinstance(json.loads(first), dict)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False


def _document_error(raw: bytes, path: Path, error: ValueError) -> DataError:
    """A JSON document that does not decode or parse (a truncated file, say), naming the line and column."""
    if isinstance(error, UnicodeDecodeError):
        line = raw.count(b"\n", 0, error.start) + 1
        return DataError(f"{path}: line {line}: byte 0x{raw[error.start]:02x} is not UTF-8 text; re-save the file "
                         f"as UTF-8")
    return DataError(f"{path}: not valid JSON at line {error.lineno} column {error.colno} ({error.msg}); is the "
                     f"file truncated? (a JSON-lines file can skip bad rows with data.bad_rows=skip)")


def _json_line(number: int, line: bytes) -> Any:
    try:
        return json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        return Unparsed(f"line {number}: byte 0x{line[e.start]:02x} (byte {e.start + 1} of the line) is not "
                        f"UTF-8 text")
    except json.JSONDecodeError as e:
        return Unparsed(f"line {number}: not valid JSON ({e.msg} at column {e.colno})")


def _json_rows(obj: Any, path: Path, split: str) -> list:
    if isinstance(obj, dict) and isinstance(obj.get(split), list):
        obj = obj[split]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a JSON list of rows or {{{split!r}: [rows]}}")
    return obj


def _read_hub(source: str, split: str) -> tuple[list[dict], str]:
    import datasets
    origin = f"hub:{source} [{split}]"
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # network, missing data set, missing split: all end here
        raise DataError(f"{origin}: could not load the data set ({type(e).__name__}: {e}); a local "
                        f"source must be an existing .parquet/.jsonl/.json/.csv file or directory") from e
    return ds.to_list(), origin
