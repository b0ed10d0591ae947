"""Per-sample power traces on disk: CSV or Parquet, by the file's extension."""

from __future__ import annotations

import os
from typing import Any

from ._errors import GreenmlError


def check_trace_path(path: str) -> str:
    """``path`` if a trace can be written there (.csv, or .parquet with pyarrow), else an error
    that says what to do."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".csv", ".parquet"):
        raise GreenmlError(f"trace={path!r}: name the file .csv or .parquet")
    if ext == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise GreenmlError(
                f"trace={path!r} needs pyarrow for Parquet: `pip install pyarrow`, "
                "or name the file .csv"
            ) from None
    return path


def write_trace(df: Any, path: str) -> None:
    """Writes a per-sample power trace as CSV or Parquet, by the file's extension."""
    if path.lower().endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False)
