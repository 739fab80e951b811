"""Consistent hashing of series keys over the configured replica list.

Every replica (and any client routing points) computes the same owner for a series from
the same list, and adding or removing one replica moves only about 1/n of the series.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence

VNODES = 128


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class Ring:
    """A hash ring of replicas, each placed at `VNODES` points."""

    def __init__(self, replicas: Sequence[str], vnodes: int = VNODES) -> None:
        points = sorted((_hash(f"{r}#{i}"), r) for r in set(replicas) for i in range(vnodes))
        self._keys = [p for p, _ in points]
        self._owners = [r for _, r in points]

    def owner(self, series: str) -> str:
        """The replica owning `series`; "" when the ring is empty."""
        if not self._keys:
            return ""
        i = bisect.bisect(self._keys, _hash(series)) % len(self._keys)
        return self._owners[i]


def owner_check(replicas: Sequence[str], me: str) -> OwnerCheck:
    return OwnerCheck(Ring(replicas) if replicas else None, me)


class OwnerCheck:
    """Whether this replica owns a series; everything when no replica list is configured."""

    def __init__(self, ring: Ring | None, me: str) -> None:
        self._ring = ring
        self._me = me

    def __call__(self, series: str) -> bool:
        return self._ring is None or self._ring.owner(series) == self._me
