"""The archive room: the HDF5 run store (schema, atomic writer, reader; docs/archive.md) and
the per-run figure data read from it. Imports ``glam.errors``, ``glam.images``,
``glam.importers`` (model records) and the engine's record types; never the report, the gate
or the CLI.

The names below are the archive's public API (``from glam.archive import open_archive``).
"""

from glam.archive.figure_data import FigureData, LayerKey
from glam.archive.hdf5 import (
    FORMAT,
    MAP_NAMES,
    SCHEMA_VERSION,
    STORE_DTYPES,
    Archive,
    RunData,
    RunWriter,
    StoreDtype,
    check_archive_target,
    check_run_names,
    commit_run,
    existing_runs,
    open_archive,
    software_versions,
    validate_run_name,
)

__all__ = [
    "FORMAT",
    "MAP_NAMES",
    "SCHEMA_VERSION",
    "STORE_DTYPES",
    "Archive",
    "FigureData",
    "LayerKey",
    "RunData",
    "RunWriter",
    "StoreDtype",
    "check_archive_target",
    "check_run_names",
    "commit_run",
    "existing_runs",
    "open_archive",
    "software_versions",
    "validate_run_name",
]
