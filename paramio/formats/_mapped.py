"""Tensors mapped straight from a file: the one implementation behind the safetensors, ONNX and HDF5
readers, which all keep contiguous tensor bytes at known offsets.

Mapping is copy-on-write (``ACCESS_COPY``): pages are read when touched and a loaded tensor can be edited
without writing to the file. The file is mapped from a descriptor opened once, never from its name again, so
a file replaced by name meanwhile (a concurrent save) does not mix into what is read. A tensor of at least
``OWN_MAP`` bytes gets a mapping of its own, unmapped when the tensor is freed: streaming through a file
(``convert``) then keeps one tensor's pages resident, not every page it has touched. Bytes that are not
aligned for their dtype (protobuf places them anywhere; small HDF5 datasets are not aligned) are copied.

``copy=True`` reads each tensor into memory of its own instead (``pread`` from the same descriptor): what the
HDF5, ONNX and ``.pt`` readers do, as h5py, onnx and ``torch.load`` do. A mapped tensor is only as stable as
its file: another program truncating or rewriting the file *in place* (not replacing it by rename, as every
paramio save does) changes it, or kills the process with SIGBUS on the next access. safetensors keeps the
mapping, as stock ``safetensors.torch.load_file`` does (README "Reliability").
"""

from __future__ import annotations

import mmap
import os

import torch

from ..dtypes import DTYPES
from ..errors import FormatError

__all__ = ["ITEMSIZE", "OWN_MAP", "MappedFile"]

#: Element size in bytes of every manifest dtype.
ITEMSIZE: dict[str, int] = {name: dtype.itemsize for name, dtype in DTYPES.items()}
#: Tensors of at least this many bytes are mapped on their own.
OWN_MAP = 1 << 20


class MappedFile:
    """One open file whose byte ranges become tensors. ``owns_fd``: close the descriptor with the object
    (False for a descriptor that another library keeps, such as HDF5's); ``copy``: read each tensor into
    memory of its own instead of mapping it; ``name``: the file, for messages."""

    def __init__(self, fd: int, size: int, *, owns_fd: bool = True, copy: bool = False, name: str = "") -> None:
        self.fd = fd
        self.size = size
        self.copy = copy
        self.name = name
        self._owns_fd = owns_fd
        self._storage: torch.UntypedStorage | None = None

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def tensor(self, start: int, nbytes: int, dtype: torch.dtype) -> torch.Tensor:
        """``nbytes`` bytes at ``start`` as a flat tensor of ``dtype`` (the caller checked the range)."""
        if nbytes == 0:
            return torch.empty(0, dtype=dtype)
        if self.copy:
            return self._read(start, nbytes).view(dtype)
        itemsize = dtype.itemsize
        if nbytes >= OWN_MAP and not start % itemsize:
            skip = start % mmap.ALLOCATIONGRANULARITY
            own = mmap.mmap(self.fd, skip + nbytes, access=mmap.ACCESS_COPY, offset=start - skip)
            return torch.frombuffer(own, dtype=dtype, offset=skip, count=nbytes // itemsize)
        if self._storage is None:
            whole = mmap.mmap(self.fd, 0, access=mmap.ACCESS_COPY)
            self._storage = torch.frombuffer(whole, dtype=torch.uint8).untyped_storage()
        data = torch.empty(0, dtype=torch.uint8).set_(self._storage, start, (nbytes,))
        if start % itemsize:
            data = data.clone()  # an aligned copy for this dtype
        return data.view(dtype)

    def _read(self, start: int, nbytes: int) -> torch.Tensor:
        """``nbytes`` bytes at ``start`` in a tensor of their own (aligned for any dtype)."""
        data = torch.empty(nbytes, dtype=torch.uint8)
        view = memoryview(data.numpy())
        done = 0
        while done < nbytes:
            n = os.preadv(self.fd, [view[done:]], start + done)
            if n == 0:
                raise FormatError(f"{self.name or 'file'}: ends at byte {start + done} inside a tensor that runs to "
                                  f"byte {start + nbytes} (truncated, or rewritten in place while being read)")
            done += n
        return data

    def close(self) -> None:
        """Release the descriptor; tensors already made keep their mappings."""
        if self.fd >= 0 and self._owns_fd:
            os.close(self.fd)
        self.fd = -1
