"""Read the two pickle formats our offline assets ship in, without torch and without trusting them.

A pickle can run arbitrary code, so both readers admit only the handful of globals the formats need
and refuse everything else.
"""
import collections
import io
import pickle
import struct

import numpy as np


class UnsafePickleError(ValueError):
    pass


class _NumpyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to load {module}.{name} from a numpy pickle") from None


def load_numpy_array(fileobj) -> np.ndarray:
    """Load a pickled numpy array, admitting numpy array reconstruction only."""
    array = _NumpyUnpickler(fileobj).load()
    if not isinstance(array, np.ndarray):
        raise UnsafePickleError(f"expected a numpy array, got {type(array).__name__}")
    return array


# --- PyTorch legacy (pre-1.6, non-zip) .pth files -------------------------------------------------
# Layout: pickle(magic) pickle(protocol) pickle(sys_info) pickle(object) pickle(storage keys), then
# for each key in that order: int64 element count + raw little-endian data.

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


class _LazyTensor:
    """A tensor whose storage bytes come after the pickled object in the file."""

    def __init__(self, storage_key, offset, size, stride):
        self.storage_key, self.offset, self.size, self.stride = storage_key, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, hooks=None, *_):
    return _LazyTensor(storage, storage_offset, tuple(size), tuple(stride))


class _TorchUnpickler(pickle.Unpickler):
    def __init__(self, fileobj, storages):
        super().__init__(fileobj)
        self._storages = storages  # key -> dtype, filled as the object is read

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise UnsafePickleError(f"refusing to load {module}.{name} from a .pth file")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, _numel = pid[:5]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise UnsafePickleError(f"unexpected persistent id {pid!r}")
        self._storages[key] = storage_type.dtype
        return key


def load_legacy_torch_state_dict(data: bytes) -> "collections.OrderedDict[str, np.ndarray]":
    """Parse a legacy-format PyTorch state dict into an OrderedDict of name -> numpy array."""
    stream = io.BytesIO(data)
    header = _NumpyUnpickler(stream)  # admits no globals the header could need: plain ints/dicts
    if header.load() != _LEGACY_MAGIC:
        raise UnsafePickleError("not a legacy PyTorch file (bad magic number)")
    header.load()  # protocol version
    sys_info = header.load()
    if not sys_info.get("little_endian", True):
        raise UnsafePickleError("big-endian .pth files are not supported")
    storage_dtypes = {}
    state = _TorchUnpickler(stream, storage_dtypes).load()
    keys = _NumpyUnpickler(stream).load()
    buffers = {}
    for key in keys:
        (numel,) = struct.unpack("<q", stream.read(8))
        dtype = storage_dtypes[key]
        raw = stream.read(numel * dtype.itemsize)
        if len(raw) != numel * dtype.itemsize:
            raise UnsafePickleError(f"truncated .pth file: storage {key} is short")
        buffers[key] = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
    result = collections.OrderedDict()
    for name, lazy in state.items():
        buffer = buffers[lazy.storage_key]
        itemsize = buffer.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            buffer[lazy.offset:], shape=lazy.size, strides=[s * itemsize for s in lazy.stride]
        )
        result[name] = np.array(view)  # own, contiguous copy
    return result
