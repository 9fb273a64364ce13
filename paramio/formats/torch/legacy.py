"""Legacy (pre-zip) ``torch.save`` files, bounded before ``torch.load`` sees them: torch allocates each
storage at the size the pickle claims before reading its data, so a crafted 1 kB file could ask for
terabytes. The pickles are walked with :mod:`pickletools` (nothing is unpickled) to add up the claims."""

from __future__ import annotations

import pickletools
from typing import Any

import torch

__all__ = ["Bounded", "legacy_storage_bytes"]


class Bounded:
    """A file reader that never asks for more bytes than the file has left (pickletools would allocate a
    string's claimed length before finding the file too short)."""

    def __init__(self, fh: Any, size: int) -> None:
        self._fh = fh
        self._size = size

    def read(self, n: int = -1) -> bytes:
        left = self._size - self._fh.tell()
        return self._fh.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self._fh.readline(1 << 16)

    def __getattr__(self, name: str) -> Any:  # seek, tell, fileno ...: the file's own
        return getattr(self._fh, name)


#: Legacy storage classes by pickled global, with their element sizes.
_LEGACY_STORAGES = {
    f"torch {name}Storage": dtype.itemsize
    for name, dtype in (("Double", torch.float64), ("Float", torch.float32), ("Half", torch.float16),
                        ("BFloat16", torch.bfloat16), ("Long", torch.int64), ("Int", torch.int32),
                        ("Short", torch.int16), ("Char", torch.int8), ("Byte", torch.uint8), ("Bool", torch.bool),
                        ("ComplexDouble", torch.complex128), ("ComplexFloat", torch.complex64))
}


class _Global(str):
    """A ``module name`` global, as a pickle names it."""


def legacy_storage_bytes(fh: Bounded) -> int:
    """Bytes the storages of a legacy file claim, read from its pickles without running them.

    A legacy file is three small pickles (magic number, protocol, system info), the object pickle whose
    persistent ids ``("storage", <class>, key, location, numel, view)`` declare the storages, then the data.
    The object pickle is replayed on a stack that knows only literals, tuples, memo and globals; any other
    opcode yields opaque values, so the stack keeps its depth whatever the pickle does.

    Longer than our usual function on purpose: it is one opcode dispatch over one stack, memo and mark,
    and read top to bottom it shows every opcode's effect on them; split into handlers, that shared state
    would travel through every call.
    """
    for _ in range(3):
        for _op in pickletools.genops(fh):
            pass
    stack: list[object] = []
    memo: dict[int, object] = {}
    mark = object()
    opaque = object()
    storages: dict[object, int] = {}

    def pop_mark() -> list[object]:
        at = len(stack) - 1 - stack[::-1].index(mark)
        items = stack[at + 1:]
        del stack[at:]
        return items

    for op, arg, _pos in pickletools.genops(fh):
        name = op.name
        if name == "MARK":
            stack.append(mark)
        elif name == "STOP":
            break
        elif name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
            memo[len(memo) if arg is None else arg] = stack[-1]
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo[arg])
        elif name == "GLOBAL":
            stack.append(_Global(arg))
        elif name == "STACK_GLOBAL":
            attr, module = stack.pop(), stack.pop()
            stack.append(_Global(f"{module} {attr}") if isinstance(attr, str) and isinstance(module, str) else opaque)
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = stack[-n:]
            if len(items) != n:
                raise ValueError("pickle stack underflow")
            del stack[-n:]
            stack.append(tuple(items))
        elif name in ("NONE", "NEWTRUE", "NEWFALSE"):
            stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}[name])
        elif name == "BINPERSID":
            pid = stack.pop()
            if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
                numel, itemsize = pid[4], _LEGACY_STORAGES.get(pid[1], 16)
                if type(numel) is not int or numel < 0:
                    raise ValueError(f"storage size {numel!r} is not a count")
                storages[pid[2]] = numel * itemsize
            stack.append(opaque)
        elif not op.stack_before and len(op.stack_after) == 1 and op.arg is not None:
            stack.append(arg)  # a literal: int, float, string or bytes
        else:
            if pickletools.markobject in op.stack_before:
                pop_mark()
                before = op.stack_before.index(pickletools.markobject)
            else:
                before = len(op.stack_before)
            if len(stack) < before:
                raise ValueError("pickle stack underflow")
            del stack[len(stack) - before:]
            stack.extend([opaque] * len(op.stack_after))
    return sum(storages.values())
