"""Resource ids: 26 characters, time-ordered (48-bit milliseconds, then 80 random bits, in
Crockford base32), so ids sort by creation time and page in that order."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
PATTERN = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def new_id(now: float, rand: Callable[[int], bytes] = os.urandom) -> str:
    value = (int(now * 1000) << 80) | int.from_bytes(rand(10), "big")
    out = []
    for _ in range(26):
        out.append(CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(out))


def valid(candidate: str) -> bool:
    return PATTERN.fullmatch(candidate) is not None
