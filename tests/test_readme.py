"""The README's examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def section(heading: str) -> str:
    """The README's text under `## heading`, up to the next heading of that level."""
    text = README.read_text()
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def fenced(text: str, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(text) if lang == language]


def test_the_embedding_example_runs_as_written(tmp_path: Path) -> None:
    embedding = section("Embedding")
    (script, *_) = fenced(embedding, "python")
    (tmp_path / "demo.py").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("STOCKKEEPER_")}
    result = subprocess.run(
        [sys.executable, "demo.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    (expected, *_) = fenced(embedding, "text")
    assert result.stdout == expected
    assert (tmp_path / "demo.db").is_file(), "the example uses sqlite:///demo.db, relative"
