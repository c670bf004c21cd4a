"""User plugins: Python files (or importable modules) that register criteria or healing kinds at import.

`plugins: [my_criteria.py]` in the config names them (a path is relative to the working directory). The workflow
imports them before it validates the config, so their names join the schema's enums, the wildcards and the DAG;
the jobs of a plugin's criterion import it again (rules/prune.smk), because every job is a separate process.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from streamline.healing import kinds as healing_kinds
from streamline.pruning import criteria


def import_plugin(entry: str) -> None:
    """Import one plugin: a `.py` file by path, anything else as a module name (once per process)."""
    if not entry.endswith(".py"):
        importlib.import_module(entry)
        return
    path = Path(entry).expanduser().resolve()
    name = f"streamline_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return
    if not path.is_file():
        raise FileNotFoundError(f"plugin {entry!r} is not a file ({path})")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


# What each plugin registered when this process imported it (an import happens once, like sys.modules).
_REGISTERED: dict[str, list[str]] = {}


def load_plugins(entries: list[str]) -> dict[str, str]:
    """Import every plugin; returns registered name -> the plugin that registered it (criteria and healing kinds)."""
    owners: dict[str, str] = {}
    for entry in map(str, entries):
        if entry not in _REGISTERED:
            before = set(criteria.CRITERIA) | set(healing_kinds.HEALING_KINDS)
            import_plugin(entry)
            _REGISTERED[entry] = sorted((set(criteria.CRITERIA) | set(healing_kinds.HEALING_KINDS)) - before)
        owners.update(dict.fromkeys(_REGISTERED[entry], entry))
    return owners
