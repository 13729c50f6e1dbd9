"""Read a Core ML mlprogram package with numpy, no macOS needed: its spec, MIL value types, weight blobs.

Shared by the Core ML exporter (which finds and patches weight blobs) and the MIL interpreter (which runs
the program). The weight file (`weights/weight.bin`) is MIL's blob storage: a 64-byte header (blob count,
version 2), then per blob a 64-byte metadata record (sentinel 0xDEADBEEF, data type, size in bytes, data
offset) followed by the data, 64-byte aligned. Sub-byte types (int4, uint1..uint6) are packed as a little-endian bit stream. The spec points at a blob by
the offset of its metadata record. Every read is validated, so a truncated or corrupt file gives an error
that names the file and the offset instead of garbage weights.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from memlora.errors import MemloraError

SENTINEL = 0xDEADBEEF
HEADER = struct.Struct("<II")
METADATA = struct.Struct("<IIQQ")

# blob storage data type code -> (numpy storage dtype, bits per element, signed sub-byte)
BYTE_TYPES: dict[int, np.dtype] = {
    1: np.dtype(np.float16),
    2: np.dtype(np.float32),
    3: np.dtype(np.uint8),
    4: np.dtype(np.int8),
    6: np.dtype(np.int16),
    7: np.dtype(np.uint16),
    14: np.dtype(np.int32),
    15: np.dtype(np.uint32),
}
SUB_BYTE_TYPES: dict[int, tuple[int, bool]] = {
    8: (4, True),  # int4
    9: (1, False),  # uint1
    10: (2, False),  # uint2
    11: (4, False),  # uint4
    12: (3, False),  # uint3
    13: (6, False),  # uint6
}


def unpack_bits(packed: np.ndarray, count: int, bits: int, signed: bool) -> np.ndarray:
    """Unpack `count` values of `bits` bits from a little-endian bit stream into int8/uint8."""
    if bits == 4:
        out = np.empty(packed.size * 2, dtype=np.uint8)
        out[0::2] = packed & 0x0F
        out[1::2] = packed >> 4
        out = out[:count]
    else:
        stream = np.unpackbits(packed, bitorder="little")[: count * bits].reshape(count, bits)
        out = (stream << np.arange(bits, dtype=np.uint8)).sum(axis=1, dtype=np.uint8)
    if signed:
        out = out.view(np.int8).copy()
        out[out >= 1 << (bits - 1)] -= 1 << bits
    return out


class BlobFile:
    """A memory-mapped weight file; `read(offset, count)` returns the blob at a metadata offset."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.data = np.memmap(self.path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise MemloraError(f"{self.path}: cannot read the weight file ({exc})") from exc
        if self.data.size < 64:
            raise MemloraError(f"{self.path}: weight file is truncated ({self.data.size} bytes, header needs 64)")
        count, version = HEADER.unpack_from(self.data, 0)
        if version != 2:
            raise MemloraError(f"{self.path}: unsupported blob storage version {version} (expected 2)")
        self.count = count

    def _fail(self, offset: int, problem: str) -> MemloraError:
        return MemloraError(f"{self.path}: corrupt weight blob at offset {offset}: {problem}")

    def span(self, offset: int) -> tuple[int, int, int]:
        """(data type code, size in bytes, data offset) of the blob whose metadata is at `offset`."""
        if offset < 64 or offset + METADATA.size > self.data.size:
            raise self._fail(offset, f"metadata lies outside the file of {self.data.size} bytes")
        sentinel, dtype_code, size, data_offset = METADATA.unpack_from(self.data, offset)
        if sentinel != SENTINEL:
            raise self._fail(offset, f"bad sentinel 0x{sentinel:08X} (expected 0xDEADBEEF)")
        if data_offset + size > self.data.size:
            raise self._fail(offset, f"data [{data_offset}, {data_offset + size}) runs past the end of the file")
        return dtype_code, size, data_offset

    def read(self, offset: int, count: int) -> np.ndarray:
        """The flat blob at metadata `offset` holding `count` elements (int8/uint8 for sub-byte types)."""
        dtype_code, size, data_offset = self.span(offset)
        raw = self.data[data_offset : data_offset + size]
        if dtype_code in BYTE_TYPES:
            dtype = BYTE_TYPES[dtype_code]
            if size != count * dtype.itemsize:
                raise self._fail(offset, f"holds {size} bytes, the program expects {count} x {dtype}")
            return raw.view(dtype)
        if dtype_code in SUB_BYTE_TYPES:
            bits, signed = SUB_BYTE_TYPES[dtype_code]
            if size != (count * bits + 7) // 8:
                raise self._fail(offset, f"holds {size} bytes, the program expects {count} x {bits}-bit values")
            return unpack_bits(np.asarray(raw), count, bits, signed)
        raise self._fail(offset, f"unknown data type code {dtype_code}")


# MIL DataType code -> (name, numpy dtype values are held in). fp16 values are held in float32 arrays,
# rounded to fp16, so numpy's BLAS-backed float32 kernels do the arithmetic.
DTYPES: dict[int, tuple[str, np.dtype]] = {
    1: ("bool", np.dtype(np.bool_)),
    2: ("string", np.dtype(object)),
    10: ("fp16", np.dtype(np.float32)),
    11: ("fp32", np.dtype(np.float32)),
    12: ("fp64", np.dtype(np.float64)),
    21: ("int8", np.dtype(np.int8)),
    22: ("int16", np.dtype(np.int16)),
    23: ("int32", np.dtype(np.int32)),
    24: ("int64", np.dtype(np.int64)),
    25: ("int4", np.dtype(np.int8)),
    31: ("uint8", np.dtype(np.uint8)),
    32: ("uint16", np.dtype(np.uint16)),
    33: ("uint32", np.dtype(np.uint32)),
    34: ("uint64", np.dtype(np.uint64)),
    35: ("uint4", np.dtype(np.uint8)),
    36: ("uint2", np.dtype(np.uint8)),
    37: ("uint1", np.dtype(np.uint8)),
    38: ("uint6", np.dtype(np.uint8)),
    39: ("uint3", np.dtype(np.uint8)),
}
FP16 = 10
SUB_BYTE_BITS = {25: (4, True), 35: (4, False), 36: (2, False), 37: (1, False), 38: (6, False), 39: (3, False)}


@dataclass(frozen=True)
class TensorType:
    """A MIL tensor type: data type code and shape (None for a dimension unknown until run time)."""

    dtype: int
    shape: tuple[int | None, ...]
    state: bool = False

    @property
    def name(self) -> str:
        return DTYPES.get(self.dtype, (f"type {self.dtype}",))[0]

    @property
    def numpy(self) -> np.dtype:
        if self.dtype not in DTYPES:
            raise MemloraError(f"unsupported MIL data type code {self.dtype}")
        return DTYPES[self.dtype][1]


def parse_type(value_type) -> TensorType:
    kind = value_type.WhichOneof("type")
    if kind == "stateType":
        inner = parse_type(value_type.stateType.wrappedType)
        return TensorType(inner.dtype, inner.shape, state=True)
    if kind != "tensorType":
        raise MemloraError(f"unsupported MIL value type '{kind}'")
    t = value_type.tensorType
    dims = tuple(d.constant.size if d.WhichOneof("dimension") == "constant" else None for d in t.dimensions)
    return TensorType(t.dataType, dims)


def load_spec(path: Path):
    """(spec file, parsed `Model` proto) of a .mlpackage directory or a bare .mlmodel file."""
    from coremltools.proto import Model_pb2

    path = Path(path)
    spec_path = path
    if path.is_dir():
        manifest = path / "Manifest.json"
        try:
            info = json.loads(manifest.read_text())
            root = info["itemInfoEntries"][info["rootModelIdentifier"]]["path"]
        except (OSError, ValueError, KeyError) as exc:
            raise MemloraError(f"{manifest}: not a readable Core ML package manifest ({exc})") from exc
        spec_path = path / "Data" / root
    spec = Model_pb2.Model()
    try:
        spec.ParseFromString(spec_path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning-like errors
        raise MemloraError(f"{spec_path}: cannot parse the Core ML model spec ({exc})") from exc
    return spec_path, spec
