"""lz4 block decompression straight into a caller's buffer (``LZ4_decompress_safe``).

Why: python-lz4's ``lz4.block.decompress`` has no output-buffer argument; it
returns a fresh ``bytes`` per call, which the codec then copied into a fresh
array. On a policy worker decoding 7.9 MB compressed GR1 requests, those fresh
buffers page-fault on every request (measured in docs/benchmarks.md). The C
function takes a destination pointer, so a worker can decompress into memory
it reuses, with one pass over the bytes and no temporary.

Where the symbol comes from: the lz4 package's own extension module bundles
liblz4 and exports its functions, so the same library that python-lz4 uses is
called, whatever the system has; the system's ``liblz4`` is the second choice.
When neither loads, ``available()`` is False and callers keep python-lz4.
``LZ4_decompress_safe`` never reads past ``src_len`` nor writes past
``dst_len``, whatever the input, and ctypes releases the GIL during the call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

__all__ = ["available", "decompress_into"]


def _load() -> Any:
    candidates: list[str] = []
    try:
        import lz4.block._block as ext  # the extension python-lz4 itself calls

        candidates.append(str(ext.__file__))
    except (ImportError, AttributeError):
        pass
    system = ctypes.util.find_library("lz4")
    if system:
        candidates.append(system)
    for path in candidates:
        try:
            fn = ctypes.CDLL(path).LZ4_decompress_safe
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        return fn
    return None


_DECOMPRESS_SAFE = _load()


def available() -> bool:
    """Whether ``decompress_into`` can be used (else use ``lz4.block.decompress``)."""
    return _DECOMPRESS_SAFE is not None


def decompress_into(src_addr: int, src_len: int, dst_addr: int, dst_len: int) -> int:
    """Decompress one lz4 block of ``src_len`` bytes into ``dst_len`` bytes at ``dst_addr``.

    Returns the number of bytes written, negative for corrupt input. The
    caller keeps both buffers alive and checks the count against what it expects.
    """
    return int(_DECOMPRESS_SAFE(src_addr, dst_addr, src_len, dst_len))
