"""How a Hugging Face Hub name is written, in one place (config, the library scan)."""

from __future__ import annotations

import re

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name
# A whole owner's repos as one library source: "hf://OWNER" or "OWNER/*".
HUB_OWNER = re.compile(r"^(?:hf://(?P<a>[A-Za-z0-9][\w.-]*)/?|(?P<b>[A-Za-z0-9][\w.-]*)/\*)$")


def hub_owner(source: str) -> str | None:
    """The owner a source names as a whole (`hf://OWNER`, `OWNER/*`), else None."""
    found = HUB_OWNER.match(str(source))
    return (found["a"] or found["b"]) if found else None
