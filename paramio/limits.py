"""Limits that reading enforces and saving therefore respects (a file paramio writes is a file it reads).

Read at call time (``limits.MAX_TENSORS``), so that tests can lower them.
"""

from __future__ import annotations

__all__ = ["MAX_TENSORS", "MAX_MANIFEST_BYTES", "MAX_NAME", "MAX_INDEX_BYTES"]

#: Stored tensors one checkpoint may hold: far above real models (tens of thousands), far below what
#: describing them would cost in memory.
MAX_TENSORS = 1_000_000
#: A paramio manifest longer than this is refused before it is parsed (the safetensors header cap).
MAX_MANIFEST_BYTES = 100_000_000
#: Characters in a tensor name (the manifest's limit).
MAX_NAME = 4096
#: A sharded folder's index file longer than this is refused before it is read (it holds the manifest and a
#: name per tensor: twice the manifest's cap).
MAX_INDEX_BYTES = 2 * MAX_MANIFEST_BYTES
