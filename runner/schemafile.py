"""A JSON Schema file a recipe names (eval.json_schema, data.output_schema): read within bounds and compiled once,
with one error for each way it can be unusable. The recipe check (runner.recipe.load), the data check
(runner.data.check) and the eval stage (runner.evaluate.stage) all read it here."""
from __future__ import annotations

from pathlib import Path

from runner.errors import TunebookError
from runner.safeload import Limits, load_json_file

# A JSON Schema file is a page of rules, not data.
SCHEMA_FILE_LIMITS = Limits(max_bytes=1024 * 1024, max_depth=32, max_nodes=50_000)


def compile_validator(schema):
    """A jsonschema validator for the schema's declared draft (2020-12 when it declares none); raises
    jsonschema.SchemaError when it is no valid JSON Schema."""
    from jsonschema.validators import validator_for

    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def load_validator(path: Path, display: str):
    """The jsonschema validator of the file (its declared draft; 2020-12 when it declares none). Raises
    TunebookError when the file is missing, not bounded JSON, or not a valid JSON Schema."""
    from jsonschema import SchemaError

    if not Path(path).is_file():
        raise TunebookError(f"JSON Schema file '{display}' not found (paths are relative to the project root); "
                            "check the name or create it")
    try:
        schema = load_json_file(path, display, SCHEMA_FILE_LIMITS)
    except TunebookError as exc:
        raise TunebookError(f"JSON Schema file '{display}': {exc}") from None
    if not isinstance(schema, (dict, bool)):
        raise TunebookError(f"'{display}' is not a JSON Schema (a JSON object such as {{\"type\": \"object\"}})")
    try:
        return compile_validator(schema)
    except SchemaError as exc:
        raise TunebookError(f"'{display}' is not a valid JSON Schema: {exc.message}") from None


def problem(path: Path, display: str) -> str | None:
    """Why the file can't be used as a JSON Schema, or None."""
    try:
        load_validator(path, display)
    except TunebookError as exc:
        return str(exc)
    return None
