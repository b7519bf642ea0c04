"""Tensors in and out of Triton's Python backend (inside `model.py`), through DLPack.

Numeric tensors cross the stub through DLPack (`np.from_dlpack` in, `Tensor.from_dlpack` out), not
through `Tensor.as_numpy()` / `Tensor(name, array)`: Python backends built with pybind11 < 2.12
(Triton < 24.11, before python_backend#384 — the 24.10 server `nvidia-pytriton` bundles among them)
read a numpy-2 array's item size as 0, so under numpy ≥ 2 their numpy path returns every element
as the first one and cannot send an output. DLPack carries pointer, shape and dtype itself and is
right on every version. String (BYTES) tensors have no DLPack form: they need a sound numpy path,
which `numpy_path_sound()` checks once at load time.
"""

from __future__ import annotations

import ctypes

import numpy as np

# A consumed DLPack capsule is renamed "used_dltensor" (the DLPack protocol); the stub writes "used_dlpack",
# which numpy's capsule destructor does not recognise (it reports an unraisable ValueError per tensor).
# The stub's tensor frees the DLPack tensor itself; renaming the capsule only quiets numpy.
_USED = ctypes.c_char_p(b"used_dltensor")  # kept alive: the capsule keeps this pointer, not a copy
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
_set_capsule_name.argtypes = (ctypes.py_object, ctypes.c_char_p)
_set_capsule_name.restype = ctypes.c_int


def read_input(pb_utils, request, name: str) -> np.ndarray | None:
    """The request's numeric input `name` as a numpy array of its own (None when the request did not send it)."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    return np.array(np.from_dlpack(tensor))  # a copy: the request's memory is released once execute returns


def read_strings(pb_utils, request, name: str) -> np.ndarray | None:
    """The request's BYTES input `name` (an object array of bytes), or None when it was not sent."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else np.array(tensor.as_numpy(), dtype=object)


def output_tensor(pb_utils, name: str, array: np.ndarray):
    """A `pb_utils.Tensor` named `name` holding `array` (numeric through DLPack; object arrays as BYTES)."""
    array = np.asarray(array)
    if array.dtype == object:
        return pb_utils.Tensor(name, array)
    capsule = np.ascontiguousarray(array).__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_capsule_name(capsule, _USED)
    return tensor


def numpy_path_sound(pb_utils) -> bool:
    """Whether this Python backend builds numpy arrays correctly (False: pybind11 < 2.12 under numpy ≥ 2,
    where `as_numpy()` and BYTES tensors are wrong)."""
    expected = np.arange(1, 5, dtype=np.int32)
    return np.array_equal(output_tensor(pb_utils, "probe", expected).as_numpy(), expected)
