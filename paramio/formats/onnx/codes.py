"""ONNX's vocabulary as paramio uses it: dtype codes, the metadata keys paramio writes, protobuf's size limit."""

from __future__ import annotations

from onnx import TensorProto

__all__ = ["CODES", "NAMES", "CONSTANTS_KEY", "PROTOBUF_LIMIT", "MAX_RANK"]

#: Names of initializers that are graph constants of the exporter, not parameters (JSON list).
CONSTANTS_KEY = "paramio.onnx.constants"
#: protobuf refuses messages of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1
MAX_RANK = 64

# manifest dtype name <-> TensorProto.DataType
CODES: dict[str, int] = {
    "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE, "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16, "float8_e4m3fn": TensorProto.FLOAT8E4M3FN,
    "float8_e5m2": TensorProto.FLOAT8E5M2, "complex64": TensorProto.COMPLEX64,
    "complex128": TensorProto.COMPLEX128, "int64": TensorProto.INT64, "int32": TensorProto.INT32,
    "int16": TensorProto.INT16, "int8": TensorProto.INT8, "uint64": TensorProto.UINT64,
    "uint32": TensorProto.UINT32, "uint16": TensorProto.UINT16, "uint8": TensorProto.UINT8,
    "bool": TensorProto.BOOL,
}
NAMES = {code: name for name, code in CODES.items()}
