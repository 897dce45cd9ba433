"""Helpers for tests that run the real `stockkeeper` command."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

STOCKKEEPER = shutil.which("stockkeeper", path=str(Path(sys.executable).parent)) or "stockkeeper"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
