"""The shape every verb returns: a typed, frozen report that also reads as the JSON object
the CLI prints (``report["accuracy"]``, ``dict(report)``, ``report.to_dict()``), so scripts
written against ``--json`` and the Python API see the same keys."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

__all__ = ["Report", "jsonable"]


def jsonable(value: Any) -> Any:
    """Paths as strings, enums as values, dataclasses and mappings recursively."""
    if isinstance(value, Report):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return getattr(value, "value", value) if hasattr(value, "value") and not isinstance(value, (int, float)) else value


class Report(Mapping):
    """Mix into a frozen dataclass. ``to_dict`` is the dataclass's fields, unless
    ``extra`` (a dict field) holds more keys, which are merged in at the top level."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "extra" and isinstance(value, Mapping):
                out.update(jsonable(value))
            else:
                out[f.name] = jsonable(value)
        return out

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
