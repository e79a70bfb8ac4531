"""A multiset of lengths 0..capacity as a segment tree: best-fit queries in O(log capacity).

`bins.py` keeps the rows' remaining rooms in one (the best-fit index: the smallest room that still holds a
piece).
"""

from __future__ import annotations

import numpy as np


class LengthTree:
    """How many items have each length 0..capacity; every node holds the count of the leaves below it."""

    def __init__(self, capacity: int, lengths: np.ndarray | None = None) -> None:
        self.size = 1
        while self.size < capacity + 1:
            self.size *= 2
        count = np.zeros(2 * self.size, np.int64)
        if lengths is not None and len(lengths):
            count[self.size :] = np.bincount(np.minimum(lengths, capacity), minlength=self.size)
            lo = self.size
            while lo > 1:  # each level sums the pairs of the level below it
                count[lo // 2 : lo] = count[lo : 2 * lo : 2] + count[lo + 1 : 2 * lo : 2]
                lo //= 2
        self.count: list[int] = count.tolist()

    def add(self, length: int, delta: int) -> None:
        i = length + self.size
        while i:
            self.count[i] += delta
            i //= 2

    def smallest_at_least(self, x: int) -> int | None:
        """The smallest length >= x that some item has, or None."""
        count, size = self.count, self.size
        # Walk up from leaf x collecting right siblings, then descend into the first non-empty one.
        i = x + size
        if count[i]:
            return x
        while i > 1:
            if i % 2 == 0 and count[i + 1]:
                i += 1
                while i < size:
                    i = 2 * i if count[2 * i] else 2 * i + 1
                return i - size
            i //= 2
        return None
