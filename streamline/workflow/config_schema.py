"""The config schema (schemas/config.schema.yaml): the one source of every default and every list of names.

`schema()` is the file with the registries' names as its `methods`, `replacements` and `healing` enums (so a
criterion or healing kind registered by a plugin is a valid value; tests/test_registry.py keeps the file's own
enums equal to the built-in registries); `validate` checks a config against it and fills the defaults;
`defaults(section)` is one section's defaults, for library calls and tests that build settings by hand.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from streamline.healing import kinds as healing_kinds
from streamline.pruning import criteria

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "config.schema.yaml"


def schema_file(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The schema as written."""
    return yaml.safe_load(Path(path).read_text())


def schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    """The schema with the registries' names (built-in and plugins' alike) as its name enums."""
    loaded = schema_file(path)
    properties = loaded["properties"]
    properties["methods"]["items"]["enum"] = list(criteria.CRITERIA)
    properties["replacements"]["items"]["enum"] = healing_kinds.replacement_names()
    properties["healing"]["items"]["enum"] = healing_kinds.healing_choices()
    return loaded


def _with_defaults(validator_class: type) -> type:
    """A validator that also fills each missing property with a copy of its default (jsonschema FAQ)."""
    check_properties = validator_class.VALIDATORS["properties"]

    def fill(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for key, spec in properties.items():
                if "default" in spec:
                    instance.setdefault(key, copy.deepcopy(spec["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    return jsonschema.validators.extend(validator_class, {"properties": fill})


def validate(config: dict[str, Any], loaded: dict[str, Any] | None = None) -> None:
    """Check `config` against the schema and fill its defaults in place; raises jsonschema.ValidationError."""
    loaded = schema() if loaded is None else loaded
    _with_defaults(jsonschema.Draft202012Validator)(loaded).validate(config)  # raises the first error, as Snakemake


def error_line(err: jsonschema.ValidationError) -> str:
    """`config error at KEY: problem` for a validation error (a value too long to repeat is cut to its length)."""
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path).lstrip(".")
    message = err.message
    if err.validator == "maxLength":
        message = f"{err.instance[:24]!r}... has {len(err.instance)} characters; at most {err.validator_value} allowed"
    return f"config error at {where or 'top level'}: {message}"


def defaults(section: str) -> dict[str, Any]:
    """The schema's defaults of one config section (e.g. `training`), filled as the workflow fills them."""
    config: dict[str, Any] = {}
    _with_defaults(jsonschema.Draft202012Validator)(schema()["properties"][section]).validate(config)
    return config
