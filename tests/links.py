"""Reading a page's link (its query string) in AppTest, whatever Streamlit version runs it."""

from __future__ import annotations


def link(at, key: str) -> str | None:
    """The value the page wrote for `key`. AppTest at Streamlit's floor (1.61) hands back a
    list of values where newer ones give the string; the page itself sees a string in both."""
    value = at.query_params.get(key)
    return value[-1] if isinstance(value, list) else value
