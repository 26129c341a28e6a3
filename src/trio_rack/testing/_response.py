"""What the test clients return: one response, whatever the wire protocol."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["TestResponse"]


@dataclass
class TestResponse:
    __test__ = False  # not a pytest test class

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    informational: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None
