"""JSON Schema plumbing shared by every versioned file format of the package.

The descriptor files, the population prior and the point files each ship a schema as package
data; one loader, one cached validator and one NaN/inf finder serve them all (Python's ``json``
accepts ``NaN`` and ``Infinity``, JSON Schema does not see them as numbers to refuse).
"""

from __future__ import annotations

import json
import math
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["load_json_schema", "json_schema_validator", "find_non_finite"]


@cache
def load_json_schema(package: str, file_name: str) -> dict:
    """The parsed schema ``file_name`` shipped in ``package`` (e.g. ``nnunet_shape.point_files``)."""
    return json.loads(resources.files(package).joinpath(file_name).read_text(encoding="utf-8"))


@cache
def json_schema_validator(package: str, file_name: str) -> Any:
    """A checked Draft 2020-12 validator of that schema (built once per schema)."""
    import jsonschema

    schema = load_json_schema(package, file_name)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def find_non_finite(obj: Any, parts: tuple = ()) -> tuple | None:
    """Path of the first NaN/inf number in a parsed JSON tree, None if there is none."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return parts
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, value in items:
        found = find_non_finite(value, parts + (key,))
        if found is not None:
            return found
    return None
