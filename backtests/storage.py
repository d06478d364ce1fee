"""Where backtest outputs live: a local directory, or any pyarrow filesystem URI (s3://bucket/prefix,
gs://bucket/prefix, hdfs://..., file:///abs/path), so that a cluster writes its result tables to object
storage and a laptop reads them back with polars, pandas or DuckDB.

A location with a scheme goes through `pyarrow.fs.FileSystem.from_uri` (credentials the usual way: the
environment, instance roles); a plain path is the local filesystem.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import polars as pl
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_uri(location: str | Path) -> bool:
    return "://" in str(location)


def join(location: str | Path, *parts: str) -> str:
    base = str(location)
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


def resolve(location: str | Path) -> tuple[pafs.FileSystem, str]:
    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def _missing(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.NotFound


def exists(location: str | Path) -> bool:
    return not _missing(*resolve(location))


def read_text(location: str | Path) -> str | None:
    fs, path = resolve(location)
    if _missing(fs, path):
        return None
    with fs.open_input_stream(path) as handle:
        return handle.read().decode()


def _staged(location: str | Path, write) -> None:
    """`write(fs, tmp)` under a hidden temporary name beside the target, then moved onto it: readers see the
    old file or the new one, never half of one (and dataset listings skip the hidden name)."""
    fs, path = resolve(location)
    parent, name = path.rsplit("/", 1)
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.{name}.tmp"
    write(fs, tmp)
    fs.move(tmp, path)


def write_text(location: str | Path, text: str) -> None:
    def write(fs, tmp):
        with fs.open_output_stream(tmp) as handle:
            handle.write(text.encode())

    _staged(location, write)


def _parquet_files(fs: pafs.FileSystem, path: str) -> list[str]:
    """The dataset's parquet files (hidden temporary files excluded), sorted."""
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    return sorted(i.path for i in infos if i.is_file and i.base_name.endswith(".parquet")
                  and not i.base_name.startswith("."))


def read_table(location: str | Path) -> pl.DataFrame | None:
    """Every parquet file of a result dataset as one frame (None: no file yet)."""
    fs, path = resolve(location)
    files = _parquet_files(fs, path)
    if not files:
        return None
    return pl.concat([pl.from_arrow(pq.read_table(f, filesystem=fs)) for f in files], how="diagonal_relaxed")


def write_parquet(frame: pl.DataFrame, location: str | Path) -> None:
    """One parquet file at `location` (staged: see `_staged`)."""
    _staged(location, lambda fs, tmp: pq.write_table(frame.to_arrow(), tmp, filesystem=fs))


def read_parquet(location: str | Path) -> pl.DataFrame | None:
    fs, path = resolve(location)
    if _missing(fs, path):
        return None
    return pl.from_arrow(pq.read_table(path, filesystem=fs))


def upload(local_dir: Path, location: str | Path, names: list[str]) -> None:
    """Copy files `names` of a local directory to the location (the report and its plots)."""
    fs, path = resolve(location)
    fs.create_dir(path, recursive=True)
    for name in names:
        source = local_dir / name
        if source.exists():
            pafs.copy_files(str(source), f"{path}/{name}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)


def scratch_dir(location: str | Path) -> Path:
    """A local directory to build files in: the location itself when it is local, else a temporary one."""
    if is_uri(location):
        return Path(tempfile.mkdtemp(prefix="vintage-report-"))
    path = Path(location)
    path.mkdir(parents=True, exist_ok=True)
    return path
