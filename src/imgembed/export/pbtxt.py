"""Writing protobuf text format (``config.pbtxt``) from plain Python values.

A message is a mapping from field name to value. Values: ``int``, ``float``, ``bool``, ``str``
(quoted), :class:`EnumValue` (written bare), a nested mapping (a message), or a list of either
scalars or messages (a repeated field). Map fields are written as repeated ``{key, value}``
messages, which is how protobuf text format spells them. Fields whose value is ``None`` are left
out. Nothing here knows Triton's schema; the tests parse the output with Triton's own
``model_config.proto``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

_INDENT = "  "


class EnumValue(str):
    """A protobuf enum value, such as ``TYPE_FP32``: written without quotes."""

    __slots__ = ()


def _scalar(value: object) -> str:
    if isinstance(value, EnumValue):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes (\", \\, \n, \uXXXX for control characters) are valid text format.
        return json.dumps(value)
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a protobuf scalar")


def _lines(message: Mapping[str, Any], depth: int) -> list[str]:
    pad = _INDENT * depth
    lines: list[str] = []
    for name, value in message.items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            lines += [f"{pad}{name} {{", *_lines(value, depth + 1), f"{pad}}}"]
        elif isinstance(value, Sequence) and not isinstance(value, str):
            if value and all(isinstance(item, Mapping) for item in value):
                lines.append(f"{pad}{name} [")
                for index, item in enumerate(value):
                    closing = "}," if index < len(value) - 1 else "}"
                    lines += [
                        f"{pad}{_INDENT}{{",
                        *_lines(item, depth + 2),
                        pad + _INDENT + closing,
                    ]
                lines.append(f"{pad}]")
            else:
                lines.append(f"{pad}{name}: [ {', '.join(_scalar(item) for item in value)} ]")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}")
    return lines


def render_pbtxt(message: Mapping[str, Any]) -> str:
    """The message in protobuf text format, one field per line, ending with a newline."""
    return "\n".join(_lines(message, 0)) + "\n"


def map_entries(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A map field's entries as the repeated ``{key, value}`` messages text format uses."""
    return [{"key": key, "value": value} for key, value in values.items()]
