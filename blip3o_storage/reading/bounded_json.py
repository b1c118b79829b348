"""``json.loads`` for files we do not control (data.json, caption files, index.json).

CPython's parser recurses once per nesting level, so about 1,000+ nested
``[`` raise ``RecursionError``: an interpreter error, not a bad file. Here it
is a ``ValueError`` like ``json.JSONDecodeError``, so callers that already
turn a malformed file into a clear error naming it handle this case too.
"""
from __future__ import annotations

import json
import sys
from typing import Any


def loads_bounded(text: str) -> Any:
    """``json.loads(text)``; nesting past the recursion limit is a ValueError saying so."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deeply (more levels than Python's recursion limit "
                         f"{sys.getrecursionlimit()})") from None
