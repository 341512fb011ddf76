"""Bounded waiting for tests that watch background jobs and processes."""

from __future__ import annotations

import time


def poll(condition, timeout: float = 120.0, every: float = 0.02):
    """`condition()`'s first truthy value; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {condition.__doc__ or condition}")
