"""User plugins: Python files (or importable modules) that register criteria or healing kinds at import.

`plugins: [my_criteria.py]` in the config names them (a path is relative to the working directory). The workflow
imports them before it validates the config, so their names join the schema's enums, the wildcards and the DAG;
the jobs of a plugin's criterion import it again (rules/prune.smk), because every job is a separate process.

A plugin's identity (`plugin_identity`: its entry and the sha256 of its code) is part of the settings key of every
job that imports it, so editing a plugin gives the variants it affects new folders and re-runs exactly them
(README, "Experiments"); a job refuses to run a plugin whose code changed after the DAG was built.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path
from typing import Any

from streamline.healing import kinds as healing_kinds
from streamline.pruning import criteria


class PluginError(ValueError):
    """A plugin that cannot be imported, or whose code is not the one the job's key names: one line."""


def plugin_files(entry: str) -> list[Path]:
    """The code files of a plugin: the `.py` file, or the importable module's file (a package: all its .py files)."""
    if entry.endswith(".py"):
        return [Path(entry).expanduser().resolve()]
    try:
        found = importlib.util.find_spec(entry)
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin or not found.origin.endswith(".py"):
        return []
    if found.submodule_search_locations:
        return sorted(p for folder in found.submodule_search_locations for p in Path(folder).rglob("*.py"))
    return [Path(found.origin)]


def plugin_identity(entry: str) -> dict[str, str]:
    """{"entry": the config's entry, "sha256": of its code files (name and bytes, in order)}."""
    digest = hashlib.sha256()
    for path in plugin_files(entry):
        digest.update(path.name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).hexdigest().encode())
    return {"entry": entry, "sha256": digest.hexdigest()}


def _failure(entry: str, exc: BaseException) -> PluginError:
    """One line for an exception raised while importing plugin `entry`: the file and line at fault, the error."""
    if isinstance(exc, SyntaxError):
        return PluginError(f"plugin {entry!r} does not parse: {exc.filename} line {exc.lineno}: {exc.msg}")
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    where = f" at {frames[-1].filename} line {frames[-1].lineno}" if frames else ""
    problem = str(exc).splitlines()[0] if str(exc) else ""
    return PluginError(f"plugin {entry!r} failed to import{where}: {type(exc).__name__}: {problem}".rstrip(": "))


def import_plugin(entry: str) -> None:
    """Import one plugin: a `.py` file by path, anything else as a module name (once per process)."""
    if not entry.endswith(".py"):
        try:
            importlib.import_module(entry)
        except Exception as exc:  # any import failure becomes one line naming the plugin
            raise _failure(entry, exc) from exc
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
    except Exception as exc:  # any import failure becomes one line naming the plugin
        del sys.modules[name]
        raise _failure(entry, exc) from exc
    except BaseException:
        del sys.modules[name]
        raise


# What each plugin registered when this process imported it (an import happens once, like sys.modules).
_REGISTERED: dict[str, list[str]] = {}


def load_plugins(entries: list[Any]) -> dict[str, str]:
    """Import every plugin; returns registered name -> the plugin that registered it (criteria and healing kinds).

    An entry is the config's string, or a job's plugin identity ({"entry", "sha256"}, plugin_identity): then the
    plugin's code must still be the one the job's key was computed from."""
    owners: dict[str, str] = {}
    for item in entries:
        entry = str(item["entry"] if isinstance(item, dict) else item)
        if isinstance(item, dict) and plugin_identity(entry)["sha256"] != item["sha256"]:
            raise PluginError(
                f"plugin {entry!r} changed after this run's DAG was built (its key names other code); run snakemake "
                "again, which gives the variants of the new code their own folders"
            )
        if entry not in _REGISTERED:
            before = set(criteria.CRITERIA) | set(healing_kinds.HEALING_KINDS)
            import_plugin(entry)
            _REGISTERED[entry] = sorted((set(criteria.CRITERIA) | set(healing_kinds.HEALING_KINDS)) - before)
        owners.update(dict.fromkeys(_REGISTERED[entry], entry))
    return owners
