"""Dataset loader for the mirror tasks: reads a JSON-lines file from the local data mirror.

The mirror folder comes from the TaskManager metadata key `data_mirror` (set by the workflow from
config `data_mirror`) or the environment variable STREAMLINE_DATA_MIRROR, so the YAML files stay
free of machine-specific paths.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets

from streamline.data import read_jsonl


def load(data_file: str, data_mirror: str | None = None, split: str = "test", **_metadata) -> datasets.DatasetDict:
    mirror = data_mirror or os.environ.get("STREAMLINE_DATA_MIRROR")
    if not mirror:
        raise FileNotFoundError(
            f"mirror task file {data_file!r} needs a data mirror: set config data_mirror or STREAMLINE_DATA_MIRROR"
        )
    path = Path(mirror).expanduser() / data_file
    if not path.is_file():
        raise FileNotFoundError(f"mirror task data file {str(path)!r} does not exist")
    read_jsonl(path)  # a malformed row stops here with its file and line, not deep inside `datasets`
    return datasets.load_dataset("json", data_files={split: str(path)})
