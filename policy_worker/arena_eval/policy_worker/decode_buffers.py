"""The policy worker's reused, 64-byte-aligned buffers that lz4 arrays decompress into.

Why: a compressed GR1 request carries a 7.9 MB frame stack. Decompressed into
fresh memory, every request page-faults ~1900 new 4 KiB pages (about 3 ms on
the 2-core VM, docs/benchmarks.md); decompressed into memory already touched,
it faults none. So the worker hands the codec (``codec.loads(buffers=)``)
buffers it keeps and reuses.

Lifetime without bookkeeping: a decoded array is a view whose ``base`` is the
pooled buffer, so the buffer's reference count says whether any array still
uses it -- the batch being served, a request carried to the next batch, or a
policy that kept its observations. A buffer is handed out again only when the
pool holds the last reference; otherwise a fresh one is allocated. An array
therefore never sees its memory overwritten, however long it is held, and the
buffers' lifetime is exactly the batch's (the test is
``test_a_held_observation_is_never_overwritten``). Buffers beyond
``max_bytes`` are dropped rather than kept.
"""

from __future__ import annotations

import sys

import numpy as np
import numpy.typing as npt

from arena_eval.broker.arrays import ALIGN

__all__ = ["DecodeBuffers"]

#: References to a free owner while the pool checks it: its list entry, the loop's
#: name and getrefcount's own argument. Every live view adds one (numpy gives
#: views of views the owner as ``base``).
_FREE_REFS = 3


class DecodeBuffers:
    """``buffers(n)`` -> a writable, ALIGN-aligned flat uint8 array of ``n`` bytes, reused."""

    def __init__(self, max_bytes: int = 1 << 30) -> None:
        self.max_bytes = max_bytes
        self._owners: list[npt.NDArray[np.uint8]] = []  # smallest first: first fit is best fit
        self.reused = 0
        self.allocated = 0

    def __call__(self, nbytes: int) -> npt.NDArray[np.uint8]:
        for owner in self._owners:
            if owner.nbytes >= nbytes + ALIGN and sys.getrefcount(owner) <= _FREE_REFS:
                self.reused += 1
                return _aligned_view(owner, nbytes)
        owner = np.empty(nbytes + ALIGN, np.uint8)
        self.allocated += 1
        self._owners.append(owner)
        self._owners.sort(key=lambda b: b.nbytes)
        view = _aligned_view(owner, nbytes)
        self._trim()
        return view

    @property
    def held_bytes(self) -> int:
        return sum(b.nbytes for b in self._owners)

    def _trim(self) -> None:
        """Drop free buffers, smallest first, while the pool holds over ``max_bytes``."""
        excess = self.held_bytes - self.max_bytes
        keep = []
        for owner in self._owners:
            if excess > 0 and sys.getrefcount(owner) <= _FREE_REFS:
                excess -= owner.nbytes
            else:
                keep.append(owner)
        self._owners = keep


def _aligned_view(owner: npt.NDArray[np.uint8], nbytes: int) -> npt.NDArray[np.uint8]:
    """``nbytes`` of ``owner`` starting at its first ALIGN boundary (a view: base is owner)."""
    skip = -owner.ctypes.data % ALIGN
    return owner[skip : skip + nbytes]
