"""Print pip/uv constraints that pin each of pyproject's runtime dependencies to its floor.

`make test-floors` writes this to .venv-floors/floors.txt and installs with it, so the
floors venv holds every direct dependency at exactly the `>=` number pyproject declares
(one consistent set), and the fast suite then checks that those floors are true.
"""

import re
import sys
from pathlib import Path

import tomllib

pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
for dep in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
    req, _, marker = dep.partition(";")
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*(.*?)\s*", req)
    if m and m.group(1) == "torch":
        # PyPI's Linux torch wheels are CUDA builds of several GB; the Makefile installs the
        # CPU build this machine carries (2.13) instead, within pyproject's range.
        continue
    floor = re.search(r">=\s*([^,\s]+)", m.group(2)) if m else None
    if not floor:
        sys.exit(f"floors.py: no `>=` floor in {dep!r}")
    print(f"{m.group(1)}=={floor.group(1)}" + (f" ;{marker}" if marker else ""))
