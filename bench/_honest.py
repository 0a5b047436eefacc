"""No ratio over a failed point.

A measured point is any dict in a benchmark's result (outside its ``figures`` and ``ratios``)
that counts failures under one of FAILURE_KEYS: requests answered with an error, streams that
failed to open, sessions that never answered. A figure taken over such a point compares a server
that did less work (a 429 is cheap) with one that did all of it, so when a result holds one,
:func:`withhold_ratios` replaces every ratio of that benchmark with None, names each failed point
and why under ``failed_points``, and ``python -m bench`` exits non-zero.
"""

from __future__ import annotations

from typing import Any

FAILURE_KEYS = ("errors", "stream_failures")
KIND_KEYS = ("error_kinds", "failure_kinds")  # why, where a point says
SKIPPED = ("figures", "ratios", "failed_points")
LABELS = ("workers", "level", "streams", "clients")  # what identifies a point in its list


def _label(point: dict[str, Any]) -> str:
    named = [f"{k}={point[k]}" for k in LABELS if k in point and not isinstance(point[k], dict)]
    return f" ({', '.join(named)})" if named else ""


def failed_points(result: Any, path: str = "") -> list[str]:
    """Every point of ``result`` with failures, as ``"PATH (LABELS): N errors: {kind: n}"``."""
    found: list[str] = []
    if isinstance(result, dict):
        for key in FAILURE_KEYS:
            count = result.get(key)
            if isinstance(count, int) and not isinstance(count, bool) and count > 0:
                why = next((result[k] for k in KIND_KEYS if result.get(k)), None)
                reason = f": {why}" if why else ""
                found.append(f"{path or 'result'}{_label(result)}: {count} {key}{reason}")
        for key, value in result.items():
            if key in SKIPPED or key in KIND_KEYS:
                continue
            found += failed_points(value, f"{path}.{key}" if path else str(key))
    elif isinstance(result, list):
        for i, value in enumerate(result):
            found += failed_points(value, f"{path}[{i}]")
    return found


def withhold_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """``result`` with every ratio None and ``failed_points`` listed, when a point failed;
    unchanged otherwise."""
    failed = failed_points(result)
    if not failed:
        return result
    out = dict(result)
    out["failed_points"] = failed
    ratios = result.get("ratios")
    if isinstance(ratios, dict):
        out["ratios"] = dict.fromkeys(ratios)
    return out
