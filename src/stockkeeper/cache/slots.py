"""Redis Cluster's key → slot function and the slot map (`CLUSTER SLOTS`).

A key's slot is CRC16/XMODEM of its hash tag (the text between the first `{` and the next `}`,
when not empty) or of the whole key, mod 16384. `binascii.crc_hqx(data, 0)` is that CRC, in C.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass
from typing import Any

SLOTS = 16384


def slot(key: str | bytes) -> int:
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return binascii.crc_hqx(data, 0) % SLOTS


@dataclass(frozen=True, slots=True)
class Node:
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class SlotRange:
    first: int
    last: int
    primary: Node


def parse_slots(reply: list[Any], seed_host: str) -> list[SlotRange]:
    """`CLUSTER SLOTS`: [first, last, [host, port, id, …], replicas…] per range; only the
    primary is used (reads never go to replicas). A node that does not know its own address
    answers an empty host: it is the one asked."""
    ranges = [
        SlotRange(int(r[0]), int(r[1]), Node(r[2][0].decode() or seed_host, int(r[2][1])))
        for r in reply
    ]
    covered = sum(r.last - r.first + 1 for r in ranges)
    if covered != SLOTS:
        raise ValueError(f"the cluster serves {covered} of {SLOTS} slots")
    return ranges
