"""Schema-checked CSV reading and atomic writing (temp file + rename: no partial submission ever)."""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, KitError


@dataclass(frozen=True)
class Column:
    """One expected CSV column: its name, what a cell must hold, and whether the column must exist."""

    name: str
    kind: str = "text"  # a key of CHECKS
    required: bool = True


def _check_id(value: str):
    if not value.strip():
        raise ValueError("a non-empty id")
    return value.strip()


def _check_text(value: str):
    if not value.strip():
        raise ValueError("non-empty text")
    return value


def _check_json_list(value: str):
    """LMSYS cells: a JSON list of strings; null items are kept as None (the arena logged empty turns)."""
    try:
        items = json.loads(value)
    except json.JSONDecodeError:
        raise ValueError("a JSON list of strings") from None
    if not isinstance(items, list) or not items:
        raise ValueError("a non-empty JSON list of strings")
    if any(item is not None and not isinstance(item, str) for item in items):
        raise ValueError("a JSON list whose items are strings or null")
    return items


def _check_binary(value: str):
    if value.strip() not in ("0", "1", "0.0", "1.0"):
        raise ValueError("0 or 1")
    return int(float(value))


def _check_probability(value: str):
    try:
        p = float(value)
    except ValueError:
        raise ValueError("a probability between 0 and 1") from None
    if not (0.0 <= p <= 1.0) or math.isnan(p):
        raise ValueError("a probability between 0 and 1")
    return p


def _check_letter(value: str):
    if value.strip() not in ("A", "B", "C", "D", "E"):
        raise ValueError("one of the letters A, B, C, D, E")
    return value.strip()


def _check_number(value: str):
    try:
        x = float(value)
    except ValueError:
        raise ValueError("a number") from None
    if math.isnan(x):
        raise ValueError("a number")
    return value.strip()


def _check_integer(value: str):
    text = value.strip()
    if not text.lstrip("-").isdigit():
        raise ValueError("an integer")
    return text


CHECKS = {
    "id": _check_id,
    "text": _check_text,
    "json_list": _check_json_list,
    "binary": _check_binary,
    "probability": _check_probability,
    "letter": _check_letter,
    "number": _check_number,
    "integer": _check_integer,
    "any": lambda value: value,
    "optional": lambda value: value,  # any value, and the column may be missing altogether
}


def read_csv(path, columns: list[Column], *, id_column: str = "id"):
    """Read `path` as text and check every cell of `columns`.

    Returns a pandas DataFrame (other columns kept as text). Raises InputError naming the file, the
    1-based data row (header excluded) and the column of the first bad cell, or the duplicate ids.
    """
    import pandas as pd

    path = Path(path)
    df = read_text_csv(path)
    for col in columns:
        if col.kind == "optional" and col.name not in df.columns:  # may be absent: then empty everywhere
            df[col.name] = ""
        if col.required and col.name not in df.columns:
            raise InputError(
                path,
                "missing column",
                column=col.name,
                expected=f"columns {[c.name for c in columns if c.required]}",
                got=list(df.columns),
            )
    if df.empty:
        raise InputError(path, "no data rows", expected="at least one row after the header")
    for col in columns:
        if col.name not in df.columns:
            continue
        check = CHECKS[col.kind]
        values = []
        for i, raw in enumerate(df[col.name].tolist(), start=1):
            try:
                values.append(check(raw))
            except ValueError as exc:
                kind = "empty" if not str(raw).strip() else "bad value"
                raise InputError(path, kind, row=i, column=col.name, expected=str(exc), got=raw) from None
        df[col.name] = pd.Series(values, index=df.index, dtype=object)
    if id_column in df.columns:
        dup = df[id_column][df[id_column].duplicated(keep=False)]
        if len(dup):
            rows = [i + 1 for i in dup.index[:5]]
            raise InputError(
                path,
                f"duplicate ids {sorted(set(dup.tolist()))[:5]} at rows {rows}",
                column=id_column,
                expected="each id once",
            )
    return df


def read_text_csv(path):
    """`path` as a DataFrame of text cells, exactly as written (no checks); InputError when it is not a
    readable CSV (or parquet file: its cells as text). What read_csv checks, and what a subset of rows is
    written back from."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty", expected="a header line and data rows")
    if path.suffix.lower() in (".parquet", ".pq"):
        return _read_parquet_text(path)
    if path.suffix.lower() in (".json", ".jsonl"):
        return _read_json_text(path)
    try:
        # utf-8-sig drops a BOM; keep_default_na=False keeps the literal text 'NA' (a real answer option).
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text (byte {exc.start})", expected="UTF-8") from None
    except (pd.errors.ParserError, csv.Error) as exc:
        raise InputError(path, f"malformed CSV: {exc}") from None
    except pd.errors.EmptyDataError:
        raise InputError(path, "file has no header", expected="a header line") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


def _read_json_text(path):
    """A JSON array (or JSONL file) of records as text cells: a key a record lacks is '', and records
    without an "id" get their 0-based position as one (instruction data: the alpaca format)."""
    import pandas as pd

    text = Path(path).read_text(encoding="utf-8-sig")
    try:
        if text.lstrip().startswith("["):
            records = json.loads(text)
        else:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not JSON / JSONL: {exc.msg}", row=exc.lineno) from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise InputError(path, "not a list of records", expected="[{field: value}, ...] or one record a line")
    df = pd.DataFrame([{k: "" if v is None else str(v) for k, v in r.items()} for r in records]).fillna("")
    if "id" not in df.columns:
        df.insert(0, "id", [str(i) for i in range(len(df))])
    return df


def _read_parquet_text(path):
    """A parquet file's cells as text (None -> ''), as a CSV of the same table would read."""
    import pandas as pd

    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, ImportError) as exc:
        raise InputError(path, f"cannot read as parquet: {exc}") from None
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        out[str(col).strip()] = [
            "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in df[col]
        ]
    return out


def read_yaml_mapping(path, error) -> dict:
    """The mapping a YAML file holds ({} for an empty file). `error(message)` builds the exception raised
    when the file is missing, is not valid YAML or holds something else than a mapping, so each caller
    names its own flag or field."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise error(f"file {path} not found")
    try:
        values = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise error(f"{path} must hold a mapping of field: value")
    return values


def read_submission(path):
    """A submission (or any predictions) file as text cells: the one reader validate, score, calibrate and
    ensembles share (a BOM is dropped, the text 'NA' stays text)."""
    import pandas as pd

    return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")


def _umask() -> int:
    """The process's umask (read without changing it where /proc says it; else set and restored)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(path, write) -> Path:
    """Write through `write(fileobj)` to a temp file beside `path`, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed mid-write
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a plain open() would follow the umask
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise KitError(f"could not write {path}: {exc.strerror or exc}; the previous file is unchanged") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_csv_atomic(df, path) -> Path:
    """Write a DataFrame as CSV (no index) atomically.

    A lone carriage return inside a text cell is not quoted by Python's csv writer when lines end in
    '\n', and every CSV reader then splits the row there (found by fuzzing: a generated prompt holding
    '\r' became two rows and a duplicate id). Such frames are written with every text cell quoted.
    """
    text_cols = [c for c in df.columns if df[c].dtype == object or str(df[c].dtype) in ("string", "str")]
    has_cr = any(df[c].astype(str).str.contains("\r", regex=False).any() for c in text_cols)
    quoting = csv.QUOTE_NONNUMERIC if has_cr else csv.QUOTE_MINIMAL
    return _atomic(path, lambda fh: df.to_csv(fh, index=False, lineterminator="\n", quoting=quoting))


def write_head(source, out, rows: int, start: int = 0) -> Path:
    """Records start .. start + rows - 1 (the first `rows` by default) of a CSV, JSON / JSONL or parquet
    file written to `out` in the same format, cells as written (a sample of a competition file that reads
    back as the original does)."""
    source, out = Path(source), Path(out)
    suffix, part = source.suffix.lower(), slice(start, start + rows)
    if suffix in (".json", ".jsonl"):
        text = source.read_text(encoding="utf-8-sig")
        if text.lstrip().startswith("["):
            try:
                return write_json_atomic(json.loads(text)[part], out)
            except json.JSONDecodeError as exc:
                raise InputError(source, f"not JSON: {exc.msg}", row=exc.lineno) from None
        lines = [line for line in text.splitlines() if line.strip()]
        return write_text_atomic("".join(line + "\n" for line in lines[part]), out)
    if suffix in (".parquet", ".pq"):
        import pandas as pd

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        pd.read_parquet(source).iloc[part].to_parquet(tmp, index=False)
        os.replace(tmp, out)
        return out
    return write_csv_atomic(read_text_csv(source).iloc[part].reset_index(drop=True), out)


def write_text_atomic(text: str, path) -> Path:
    """Write text atomically."""
    return _atomic(path, lambda fh: fh.write(text))


def write_json_atomic(obj, path) -> Path:
    """Write JSON (indented, UTF-8) atomically."""
    return _atomic(path, lambda fh: json.dump(obj, fh, indent=2, ensure_ascii=False))


def replace_folder(tmp, folder) -> Path:
    """Put the finished folder `tmp` in place of `folder` without a moment where neither exists: the old
    one is renamed aside (.NAME.old), the new one renamed in, the old one removed. A kill between the two
    renames leaves .NAME.old, which recover_folder() puts back."""
    import shutil

    tmp, folder = Path(tmp), Path(folder)
    recover_folder(folder)
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def recover_folder(folder) -> Path:
    """Put back `.NAME.old` when a kill fell between replace_folder()'s two renames (the folder is missing)."""
    folder = Path(folder)
    old = folder.with_name(f".{folder.name}.old")
    if not folder.exists() and old.is_dir():
        os.replace(old, folder)
    return folder
