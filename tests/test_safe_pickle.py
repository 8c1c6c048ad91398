import collections
import io
import os
import pickle
import struct
import sys
import types

import numpy as np
import pytest

from tl_core.model.safe_pickle import UnsafePickleError, load_legacy_torch_state_dict, load_numpy_array

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _fake_torch_modules():
    """Stand-ins for torch.FloatStorage / LongStorage / _utils._rebuild_tensor_v2, so pickle writes
    the same global references torch.save does, without torch."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch", "__qualname__": name})
        setattr(torch, name, cls)

    def _rebuild_tensor_v2(*args):
        raise AssertionError("only pickled, never called")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    return {"torch": torch, "torch._utils": utils}


class _Storage:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, self.args)


class _LegacyPickler(pickle.Pickler):
    def __init__(self, file, storages):
        super().__init__(file, protocol=2)
        self.storages = storages

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        self.storages[obj.key] = obj.array
        kind = "FloatStorage" if obj.array.dtype == np.float32 else "LongStorage"
        return ("storage", getattr(sys.modules["torch"], kind), obj.key, "cpu", obj.array.size, None)


def write_legacy_pth(state: dict, monkeypatch) -> bytes:
    """A legacy (pre-1.6) torch file laid out as torch.save(_use_new_zipfile_serialization=False) does.

    state: name -> (storage array, offset, size, stride)."""
    for name, module in _fake_torch_modules().items():
        monkeypatch.setitem(sys.modules, name, module)
    stream = io.BytesIO()
    for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, stream, protocol=2)
    storages = {}
    body = collections.OrderedDict(
        (name, _Tensor(_Storage(str(index), array), offset, size, stride))
        for index, (name, (array, offset, size, stride)) in enumerate(state.items())
    )
    _LegacyPickler(stream, storages).dump(body)
    pickle.dump(list(storages), stream, protocol=2)
    for array in storages.values():
        stream.write(struct.pack("<q", array.size))
        stream.write(array.tobytes())
    return stream.getvalue()


def test_legacy_pth_round_trip_with_offsets_and_strides(monkeypatch):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal(24).astype(np.float32)
    state = {
        "conv.weight": (weight, 0, (2, 3, 2, 2), (12, 4, 2, 1)),
        # A transposed view into the same kind of storage: stride order reversed, offset 2.
        "fc.weight": (np.arange(10, dtype=np.float32), 2, (2, 3), (1, 2)),
        "bn.num_batches_tracked": (np.array([7], dtype=np.int64), 0, (), ()),
    }
    loaded = load_legacy_torch_state_dict(write_legacy_pth(state, monkeypatch))
    assert list(loaded) == list(state)
    np.testing.assert_array_equal(loaded["conv.weight"], weight.reshape(2, 3, 2, 2))
    np.testing.assert_array_equal(loaded["fc.weight"], np.array([[2, 4, 6], [3, 5, 7]], dtype=np.float32))
    assert loaded["bn.num_batches_tracked"] == 7 and loaded["bn.num_batches_tracked"].dtype == np.int64


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_refuses_arbitrary_globals():
    with pytest.raises(UnsafePickleError, match="system"):
        load_numpy_array(io.BytesIO(pickle.dumps(_Evil())))
    stream = io.BytesIO()
    for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
        pickle.dump(header, stream, protocol=2)
    pickle.dump(_Evil(), stream, protocol=2)
    with pytest.raises(UnsafePickleError, match="system"):
        load_legacy_torch_state_dict(stream.getvalue())


def test_rejects_wrong_magic_and_truncation(monkeypatch):
    with pytest.raises(UnsafePickleError, match="magic"):
        load_legacy_torch_state_dict(pickle.dumps(12345, protocol=2))
    data = write_legacy_pth({"w": (np.ones(6, np.float32), 0, (6,), (1,))}, monkeypatch)
    with pytest.raises(UnsafePickleError, match="truncated"):
        load_legacy_torch_state_dict(data[:-4])


def test_numpy_array_round_trip():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(load_numpy_array(io.BytesIO(pickle.dumps(array))), array)
