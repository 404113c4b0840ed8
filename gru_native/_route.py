"""The route of a gru_native call, chosen once, here, by facts.

=============  ==========================================================  =======================
route          taken when                                                  runs
=============  ==========================================================  =======================
``TORCH``      - exporting to ONNX (both of torch's exporters translate    ``torch._VF.gru`` /
                 torch's op to ONNX's GRU, ``linear_before_reset=1``);     ``torch._VF.gru_cell``:
               - ``torch.jit.trace`` (the traced graph is nn.GRU's: it     nn.GRU's and
                 loads without gru_native, in libtorch too);               nn.GRUCell's own op
               - a torch.func transform or a forward-mode AD level,
                 outside torch.compile (the fused ops have no forward-mode
                 formula, and a custom op's autograd does not compose with
                 torch.func; nn.GRU's op does what nn.GRU does there);
               - no gru_native kernel for the input's device type and
                 dtype in this build (e.g. complex64);
               - weights the fused kernels do not take (another shape or
                 dtype than nn.GRU's: the direct entry returns None)
``DIRECT``     plain eager (not compiling or tracing, no torch.func          ``_C.gru`` /
               transform, no dispatch mode, no tensor subclass with         ``_C.gru_cell``: the
               ``__torch_function__``) on a device type whose backend this  backend, from the C++
               build registered, in one of its dtypes                        backend table,
                                                                             recording the C++
                                                                             autograd node when a
                                                                             gradient is wanted
``DISPATCHER`` every other call with a kernel: torch.compile and             ``torch.ops.gru_native
               torch.export (Dynamo, AOTAutograd, FakeTensor), dispatch     .gru_forward``: the
               modes, tensor subclasses, meta tensors                        same node (the op's
                                                                             Autograd kernel), then
                                                                             the backend's kernel or
                                                                             the fake kernel
=============  ==========================================================  =======================

The quantized modules (gru_native/quantized.py) have their own op, with no torch op behind it:
``quantized_route`` gives DIRECT in plain eager and DISPATCHER otherwise, by the same facts.

The facts: the backends this build registered (``_C.backends()``: device type -> dtypes),
torch's tracing / compiling / transform / dispatch-mode state, ``__torch_function__`` on the
arguments, and autocast (``AUTOCAST_CASTS``). The device type is only ever a key into the backend
table and the autocast table: no route names a device. A CUDA tensor on a GPU and a CPU tensor
on the CUDA emulation (GRU_NATIVE_CUDA_EMULATION=1) take the same route, through the same code,
to the same (CUDA) backend; both the direct and the dispatcher route record the same autograd
node (csrc/autograd.cpp) and run the same driver (csrc/gru_stack.h).
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Tuple

import torch

from . import _C

__all__ = ["TORCH", "DIRECT", "DISPATCHER", "route", "quantized_route", "has_kernel",
           "workspace_dtype", "autocast_dtype", "BACKENDS"]

TORCH = "torch"
DIRECT = "direct"
DISPATCHER = "dispatcher"


def _backends() -> Dict[str, Tuple[str, FrozenSet[torch.dtype], Dict[torch.dtype, torch.dtype]]]:
    """device type -> (backend name, its dtypes, {dtype: the saved gates' dtype})."""
    table = {}
    for device_type, name, dtypes, workspace in _C.backends():
        table[device_type] = (
            name,
            frozenset(getattr(torch, d) for d in dtypes),
            {getattr(torch, d): getattr(torch, w) for d, w in workspace.items()},
        )
    return table


BACKENDS = _backends()
# (device type, dtype) pairs the direct entries take.
_DIRECT_KERNELS = frozenset((t, d) for t, (_, dtypes, _) in BACKENDS.items() for d in dtypes)
# And the fake kernels: meta tensors of any dtype some backend takes.
_KERNELS = _DIRECT_KERNELS | frozenset(("meta", d) for (_, d) in _DIRECT_KERNELS)

# Where nn.GRU runs in the autocast dtype when autocast is on: on CUDA, cuDNN's autocast wrapper
# casts input, h0 and weights (outputs in that dtype). On the CPU, aten::gru has no autocast
# kernel: outputs stay in the input's dtype.
AUTOCAST_CASTS = frozenset({"cuda"})


def has_kernel(device_type: str, dtype: torch.dtype) -> bool:
    """Whether this build has gru_native kernels (or, for meta tensors, fake kernels) for tensors
    of this device type and dtype."""
    return (device_type, dtype) in _KERNELS


def workspace_dtype(device_type: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype of the saved gates for inputs of this device type and dtype (float32 for the
    half types on the CUDA backend; the input's dtype otherwise, meta tensors included)."""
    backend = BACKENDS.get(device_type)
    return backend[2].get(dtype, dtype) if backend is not None else dtype


def autocast_dtype(device_type: str):
    """The dtype nn.GRU would run in under autocast on this device type, or None."""
    if device_type in AUTOCAST_CASTS and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


_is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
_forward_ad = torch.autograd.forward_ad
_dispatch_stack_len = torch._C._len_torch_dispatch_stack
_tracing_state = torch._C._get_tracing_state
_has_torch_function = torch._C._has_torch_function
_in_onnx_export = torch.onnx.is_in_onnx_export


def _under_transform() -> bool:
    """Inside a torch.func transform (grad, vjp, jvp, jacrev, jacfwd, vmap, ...) or a
    forward-mode AD level (torch.autograd.forward_ad.dual_level)."""
    return _functorch_active() or _forward_ad._current_level >= 0


def _not_plain_eager(tensors: tuple) -> bool:
    """A dispatch mode, a tensor subclass with ``__torch_function__``, ``torch.jit.trace``, or a
    torch.func transform (outside torch.compile)."""
    return bool(_dispatch_stack_len() or _has_torch_function(tensors) or _tracing_state()
                or _under_transform())


def route(tensors: tuple, device_type: str, dtype: torch.dtype) -> str:
    """TORCH, DIRECT or DISPATCHER (the table above) for a call on `tensors` (every tensor
    argument; None allowed), whose input has this device type and dtype."""
    if _is_compiling():  # first: Dynamo folds it to True and traces nothing else here
        return TORCH if _in_onnx_export() or not has_kernel(device_type, dtype) else DISPATCHER
    if _not_plain_eager(tensors):
        if _in_onnx_export() or _tracing_state() is not None or _under_transform():
            return TORCH
        return DISPATCHER if has_kernel(device_type, dtype) else TORCH
    if (device_type, dtype) in _DIRECT_KERNELS:
        return DIRECT
    return DISPATCHER if has_kernel(device_type, dtype) else TORCH


def quantized_route(tensors: tuple) -> str:
    """The quantized op's route (gru_native.quantized; CPU kernels only, no torch op to fall back
    on): DIRECT (``_C.quantized_gru``) in plain eager, DISPATCHER
    (``torch.ops.gru_native.quantized_gru``) otherwise, by the same facts as `route`."""
    return DISPATCHER if _is_compiling() or _not_plain_eager(tensors) else DIRECT
