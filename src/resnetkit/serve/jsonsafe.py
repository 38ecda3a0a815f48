"""JSON answers that are always strict JSON, whatever numbers a model or a check produced.

Starlette's :class:`~starlette.responses.JSONResponse` encodes with ``allow_nan=False``: a NaN
or an infinity anywhere in a body raised ``ValueError`` after the route had returned, and the
client got a bare 500. Model outputs are checked where they are produced (a non-finite one is
a :class:`~resnetkit.errors.ModelOutputError`); this is the net under everything else that
ends up in a body (rollout checks, statistics): a non-finite float is written as ``null``.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import JSONResponse

__all__ = ["FiniteJSONResponse", "finite"]


def finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinities), at any depth, made None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


class FiniteJSONResponse(JSONResponse):
    """A JSON response that writes non-finite floats as ``null`` instead of failing."""

    def render(self, content: Any) -> bytes:
        """Strict JSON, compact, UTF-8, as Starlette's own."""
        try:
            return super().render(content)
        except ValueError:  # "Out of range float values are not JSON compliant"
            text = json.dumps(
                finite(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")
            )
            return text.encode("utf-8")
