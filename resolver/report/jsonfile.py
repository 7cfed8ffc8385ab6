"""The report as JSON, the schema-1 dict itself."""

from __future__ import annotations

import json
from typing import Any


def render_json(report: dict[str, Any]) -> str:
    """The report as JSON with sorted keys, so two runs over the same data are identical."""
    return json.dumps(report, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
