"""``Accept-Encoding`` negotiation (RFC 9110 §12.5.3), shared by ``static`` and ``deflate``.

Pure functions, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["accepted", "choose_encoding", "merge_vary"]


def accepted(header: str | None) -> dict[str, float]:
    """Coding -> q-value.  Malformed q-values count as 0 (refused), never as acceptance."""
    result: dict[str, float] = {}
    for item in (header or "").split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        coding = coding.lower()
        if not coding:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
                if not 0.0 <= q <= 1.0:
                    q = 0.0
        result[coding] = q
    return result


def choose_encoding(header: str | None, available: Sequence[str]) -> str | None:
    """The best of ``available`` (in our order of preference) the client accepts, or None.

    A coding's q-value is its own, else ``*``'s, else 0; the highest q wins, ties go to the
    earlier entry of ``available``.  No header means no coding (RFC 9110 allows any, but
    clients that send none usually cannot decode one).
    """
    if not header:
        return None
    q = accepted(header)
    star = q.get("*", 0.0)
    best: str | None = None
    best_q = 0.0
    for coding in available:
        value = q.get(coding, star)
        if coding == "gzip" and "gzip" not in q and "x-gzip" in q:
            value = q["x-gzip"]
        if value > best_q:
            best, best_q = coding, value
    return best


def merge_vary(current: str | list[str] | None, name: str = "accept-encoding") -> str:
    """A ``vary`` value with ``name`` added (unless present, or ``*``)."""
    if isinstance(current, (list, tuple)):
        current = ", ".join(current)
    items = [v.strip() for v in (current or "").split(",") if v.strip()]
    if "*" in items or name in (v.lower() for v in items):
        return ", ".join(items)
    return ", ".join([*items, name])
