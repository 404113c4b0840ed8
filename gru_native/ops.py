"""The gru_native ops: fake (meta) kernels, autograd, and `gru`, the functional entry point.

The C++ extension declares two ops (csrc/gru_native.cpp) and implements them per device:

- ``gru_native::gru_forward``: every layer and direction of the stack in one call. Returns the
  output, h_n, and what backward needs (the per-step gates and the lower layers' outputs).
- ``gru_native::gru_backward``: the whole backward pass in one call.

`gru` below plays the part of ``torch._VF.gru``: the checks ATen makes (same messages), the dropout
masks drawn from torch's generator exactly as ATen draws them, and the call to the forward op.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from . import _C  # noqa: F401  (loads the op library)

__all__ = ["gru", "build_info", "empty_cache"]

_ops = torch.ops.gru_native
_forward_op = _ops.gru_forward.default
_backward_op = _ops.gru_backward.default
_BelowAutograd = torch._C._AutoDispatchBelowAutograd

def empty_cache() -> int:
    """Releases the host memory gru_native keeps for reuse between calls (the large internal
    buffers of the CPU ops: workspace, scratch) that no tensor is using; returns the bytes
    released. Like torch.cuda.empty_cache(), only needed to hand memory back to the system."""
    return int(_C._empty_cache())


def build_info() -> dict:
    """How the extension was built: torch version (built against / running), whether the CUDA
    kernels were compiled (and for which architectures), compiler flags, CPU vector ISA."""
    info = dict(_C.build_info())
    info["torch_version"] = torch.__version__
    info["version"] = __import__("gru_native._version", fromlist=["__version__"]).__version__
    return info


# ----------------------------------------------------------------------------------------------
# Fake kernels: output metadata from input metadata (torch.compile, meta tensors, opcheck).


@torch.library.register_fake("gru_native::gru_forward")
def _gru_forward_fake(
    input, hx, weights, batch_sizes, dropout_mask, has_biases, num_layers, bidirectional,
    need_workspace,
):
    # The kernels' first checks (nn.GRU's), so that meta and fake tensors fail as real ones do.
    _check_attributes(input, hx, weights)
    if batch_sizes is None and input.dim() == 3:
        torch._check(input.size(0) != 0,
                     lambda: "Expected sequence length to be larger than 0 in RNN")
    if hx is not None and hx.dtype != weights[1].dtype:
        raise RuntimeError(
            f"gru_native: hx has dtype {hx.dtype} but the weights have {weights[1].dtype}")
    D = 2 if bidirectional else 1
    H = weights[1].size(1)
    if batch_sizes is None:
        torch._check(input.dim() == 3, lambda: "gru_native: dense input must be 3-D")
        T, N = input.size(0), input.size(1)
        R = T * N
        output = input.new_empty((T, N, D * H))
    else:
        torch._check(input.dim() == 2, lambda: "gru_native: packed input must be 2-D")
        torch._check(hx is not None, lambda: "gru_native: packed input needs hx")
        R = input.size(0)
        N = hx.size(1)
        output = input.new_empty((R, D * H))
    hy = input.new_empty((num_layers * D, N, H))
    if need_workspace:
        # The saved gates are float32 for half inputs on the GPU (the kernels' math type).
        on_cuda_backend = input.device.type == "cuda" or (_EMULATED and input.device.type == "cpu")
        ws_dtype = (torch.float32 if on_cuda_backend
                    and input.dtype in (torch.float16, torch.bfloat16) else input.dtype)
        workspace = input.new_empty((num_layers, D, R, 4 * H), dtype=ws_dtype)
        layer_outputs = input.new_empty((num_layers - 1, R, D * H) if num_layers > 1 else (0,))
    else:
        workspace = input.new_empty((0,))
        layer_outputs = input.new_empty((0,))
    return output, hy, workspace, layer_outputs


@torch.library.register_fake("gru_native::gru_backward")
def _gru_backward_fake(
    grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, output, workspace,
    layer_outputs, has_biases, num_layers, bidirectional, need_input_grad, need_weight_grad,
    need_hx_grad=True,
):
    grad_input = input.new_empty(input.shape) if need_input_grad else input.new_empty((0,))
    D = 2 if bidirectional else 1
    N = input.size(1) if batch_sizes is None else hx.size(1)
    grad_hx = (input.new_empty((num_layers * D, N, weights[1].size(1))) if need_hx_grad
               else input.new_empty((0,)))
    grad_weights = [w.new_empty(w.shape) for w in weights] if need_weight_grad else []
    return grad_input, grad_hx, grad_weights


# ----------------------------------------------------------------------------------------------
# Autograd: the forward op saves its workspace, the backward op consumes it.


def _setup_context(ctx, inputs, output):
    (input, hx, weights, batch_sizes, dropout_mask, has_biases, num_layers, bidirectional,
     _need_workspace) = inputs
    out, _hy, workspace, layer_outputs = output
    ctx.mark_non_differentiable(workspace, layer_outputs)
    # Unused outputs get None, not zero-filled gradients (the workspace is large).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(input, hx, out, workspace, layer_outputs, batch_sizes, dropout_mask,
                          *weights)
    ctx.has_biases = has_biases
    ctx.num_layers = num_layers
    ctx.bidirectional = bidirectional
    ctx.need_input_grad = input.requires_grad
    ctx.need_weight_grad = any(w.requires_grad for w in weights)
    ctx.need_hx_grad = hx is not None and hx.requires_grad


def _run_backward(saved, grad_output, grad_hy, has_biases, num_layers, bidirectional,
                  need_input_grad, need_weight_grad, need_hx_grad):
    """The backward op on what the forward saved; returns (grad_input, grad_hx, grad_weights)
    with None where no gradient is needed."""
    (input, hx, out, workspace, layer_outputs, batch_sizes, dropout_mask, *weights) = saved
    if workspace.dim() != 4:
        # The forward was asked not to keep its workspace (need_workspace=False) and yet a
        # gradient is wanted: recompute it, like activation checkpointing would.
        out, _, workspace, layer_outputs = _forward_op(
            input, hx, weights, batch_sizes, dropout_mask, has_biases, num_layers,
            bidirectional, True,
        )
    grad_input, grad_hx, grad_weights = _backward_op(
        grad_output, grad_hy, input, hx, weights, batch_sizes, dropout_mask, out, workspace,
        layer_outputs, has_biases, num_layers, bidirectional, need_input_grad, need_weight_grad,
        need_hx_grad,
    )
    return (
        grad_input if need_input_grad else None,
        grad_hx if need_hx_grad else None,
        list(grad_weights) if need_weight_grad else [None] * len(weights),
    )


def _differentiable_backward(saved, grad_output, grad_hy, has_biases, num_layers,
                             bidirectional):
    """The backward for create_graph=True (double backward, gradient penalties): the fused
    backward op is not itself differentiable, so the gradients are computed by autograd through
    the plain-PyTorch reference (gru_native._reference), which is differentiable to any order.
    Slow, and only used when a graph of the backward is asked for."""
    from ._reference import gru_reference

    (input, hx, _out, _workspace, _lower, batch_sizes, dropout_mask, *weights) = saved
    with torch.enable_grad():
        D = 2 if bidirectional else 1
        N = input.size(1) if batch_sizes is None else int(batch_sizes[0])
        h0 = hx if hx is not None else input.new_zeros(num_layers * D, N, weights[1].size(1))
        out, hy = gru_reference(input, h0, weights, has_biases, num_layers, bidirectional,
                                None if batch_sizes is None else batch_sizes.tolist(),
                                dropout_mask)
        pairs = [(t, g) for t, g in ((out, grad_output), (hy, grad_hy)) if g is not None]
        candidates = [input] + ([hx] if hx is not None else []) + list(weights)
        wanted = [t for t in candidates if t.requires_grad]
        grads = iter(torch.autograd.grad([p[0] for p in pairs], wanted, [p[1] for p in pairs],
                                         create_graph=True, allow_unused=True) if wanted and pairs
                     else [None] * len(wanted))
        result = [next(grads) if t.requires_grad else None for t in candidates]
    grad_input = result[0]
    grad_hx = result[1] if hx is not None else None
    grad_weights = result[2 if hx is not None else 1:]
    return grad_input, grad_hx, grad_weights


_C._set_differentiable_backward(_differentiable_backward)  # for the C++ node (create_graph)


def _backward(ctx, grad_output, grad_hy, _grad_workspace, _grad_layer_outputs):
    if torch.is_grad_enabled():
        grad_input, grad_hx, grad_weights = _differentiable_backward(
            ctx.saved_tensors, grad_output, grad_hy, ctx.has_biases, ctx.num_layers,
            ctx.bidirectional)
        return grad_input, grad_hx, grad_weights, None, None, None, None, None, None
    grad_input, grad_hx, grad_weights = _run_backward(
        ctx.saved_tensors, grad_output, grad_hy, ctx.has_biases, ctx.num_layers,
        ctx.bidirectional, ctx.need_input_grad, ctx.need_weight_grad, ctx.need_hx_grad,
    )
    return grad_input, grad_hx, grad_weights, None, None, None, None, None, None


torch.library.register_autograd(
    "gru_native::gru_forward", _backward, setup_context=_setup_context
)


class _EagerGRU(torch.autograd.Function):
    """The eager training path on devices other than the CPU (whose node is built in C++:
    csrc/cpu/autograd.cpp). The same two ops and the same backward as the autograd formula
    registered above, without the generic wrapper's per-call flattening of every argument, which
    costs more than a whole small GRU. Used only in plain eager mode (see `_plain_eager`);
    torch.compile, functorch transforms, dispatch modes and tracing go through the registered
    op."""

    @staticmethod
    def forward(ctx, input, hx, batch_sizes, dropout_mask, has_biases, num_layers,
                bidirectional, *weights):
        with _BelowAutograd():
            out, hy, workspace, layer_outputs = _forward_op(
                input, hx, list(weights), batch_sizes, dropout_mask, has_biases, num_layers,
                bidirectional, True)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(input, hx, out, workspace, layer_outputs, batch_sizes,
                              dropout_mask, *weights)
        ctx.args = (has_biases, num_layers, bidirectional)
        return out, hy

    @staticmethod
    def backward(ctx, grad_output, grad_hy):
        need = ctx.needs_input_grad
        saved = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True
            grad_input, grad_hx, grad_weights = _differentiable_backward(
                saved, grad_output, grad_hy, *ctx.args)
            return (grad_input, grad_hx, None, None, None, None, None, *grad_weights)
        with _BelowAutograd():
            grad_input, grad_hx, grad_weights = _run_backward(
                saved, grad_output, grad_hy, *ctx.args, need[0], any(need[7:]),
                saved[1] is not None and need[1])
        return (grad_input, grad_hx, None, None, None, None, None, *grad_weights)


_is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)
_forward_ad = torch.autograd.forward_ad


def _under_transform() -> bool:
    """Inside a torch.func transform (grad, vjp, jvp, jacrev, jacfwd, vmap, ...) or a
    forward-mode AD level (torch.autograd.forward_ad.dual_level)."""
    return _functorch_active() or _forward_ad._current_level >= 0


def _torch_op_wanted() -> bool:
    """Whether torch's own op (what nn.GRU / nn.GRUCell call) must run instead of the fused one.
    Never in plain eager mode:
    - exporting to ONNX: both of torch's ONNX exporters translate it to ONNX's GRU operator
      (linear_before_reset=1);
    - torch.jit.trace: the traced graph is nn.GRU's (aten::gru: it loads without gru_native, in
      libtorch too, and is the same whether or not gradients were enabled while tracing, which
      trace's check requires);
    - torch.func transforms and forward-mode AD: the fused ops have no forward-mode formula and
      a custom op's autograd does not compose with torch.func; nn.GRU's op does whatever nn.GRU
      does there (grad, jvp, jacfwd... work; vmap raises nn.GRU's error)."""
    return (torch.onnx.is_in_onnx_export() or _tracing_state() is not None
            or (not _is_compiling() and _under_transform()))


_dispatch_stack_len = torch._C._len_torch_dispatch_stack
_tracing_state = torch._C._get_tracing_state
_has_torch_function = torch._C._has_torch_function


def _plain_eager(tensors) -> bool:
    """Not compiling, tracing, under a functorch transform or a dispatch mode, and no tensor
    subclass with __torch_function__ among the arguments: the ops may then be called below
    their autograd layer, and on the CPU without the dispatcher."""
    if _is_compiling():  # first: Dynamo folds it to True and traces nothing else here
        return False
    return not (_dispatch_stack_len() or _has_torch_function(tensors) or _tracing_state()
                or _under_transform())


# ----------------------------------------------------------------------------------------------
# The functional entry point (what torch._VF.gru is to nn.GRU).


def _check_attributes(input: Tensor, hx: Optional[Tensor], weights: Sequence[Tensor]) -> None:
    # ATen's check_attributes (RNN.cpp), same messages.
    device = input.device
    for name, tensors in (("hidden", () if hx is None else (hx,)), ("parameter", weights)):
        for t in tensors:
            if t.device != device:
                raise RuntimeError(
                    f"Input and {name} tensors are not at the same device, found input tensor "
                    f"at {device} and {name} tensor at {t.device}"
                )


def _dropout_mask(
    p: float, num_layers: int, rows: int, width: int, like: Tensor
) -> Optional[Tensor]:
    """The keep-masks nn.GRU applies to each lower layer's output in training, drawn exactly as
    ATen draws them (at::dropout on CPU: ``empty_like(x).bernoulli_(1 - p).div_(1 - p)``, one
    draw per layer in layer order; p == 1 multiplies by zero without drawing; nothing is drawn
    for an empty tensor), so a seeded run reproduces nn.GRU's masks on the CPU."""
    if rows * width <= 0:
        return None
    mask = torch.empty((num_layers - 1, rows, width), dtype=like.dtype, device=like.device)
    if p == 1:
        return mask.zero_()
    for layer in range(num_layers - 1):
        mask[layer].bernoulli_(1 - p)
    return mask.div_(1 - p)


_noted_fallback = set()
_log = logging.getLogger("gru_native")
_CUDA_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# A build on the CUDA emulation (setup.py's GRU_NATIVE_CUDA_EMULATION=1) runs the CUDA backend
# on CPU tensors, with the CUDA kernels' dtypes.
_EMULATED = bool(_C.build_info()["cuda_emulation"])
_CPU_DTYPES = _CUDA_DTYPES if _EMULATED else (torch.float32, torch.float64)


def _has_kernel(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this build has gru_native kernels for the device and dtype."""
    if device.type == "cpu":
        return dtype in _CPU_DTYPES
    if device.type == "meta":
        return True
    return (device.type == "cuda" and dtype in _CUDA_DTYPES
            and torch._C._dispatch_has_kernel_for_dispatch_key("gru_native::gru_forward", "CUDA"))


def _note_fallback(device: torch.device, dtype: torch.dtype) -> None:
    # A log record, not a warning: nn.GRU warns about nothing here, and a drop-in replacement
    # must not make a warnings-as-errors test suite fail where nn.GRU passes.
    if (device.type, dtype) not in _noted_fallback:
        _noted_fallback.add((device.type, dtype))
        _log.info(
            "gru_native has no %s kernels for %s in this build; using torch's own GRU "
            "implementation there (the same math, at torch's speed)", device.type, dtype)


def _cuda_autocast_dtype() -> Optional[torch.dtype]:
    """The CUDA autocast dtype when CUDA autocast is on, else None."""
    try:
        if not torch.is_autocast_enabled("cuda"):
            return None
        return torch.get_autocast_dtype("cuda")
    except TypeError:  # torch < 2.4 spells these differently
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


def _cast_for_autocast(dtype, input, hx, weights):
    def cast(t):
        return t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype else t
    return cast(input), cast(hx), [cast(w) for w in weights]


def _torch_gru(input, hx, weights, has_biases, num_layers, dropout, train, bidirectional,
               batch_first, batch_sizes, hidden_size=None):
    """torch's own implementation (what nn.GRU calls), same arguments as `gru`."""
    if batch_sizes is None:
        if hx is None:
            hx = _zeros_hidden(input, weights, num_layers, bidirectional, batch_first,
                               hidden_size)
        return torch._VF.gru(input, hx, weights, has_biases, num_layers, dropout, train,
                             bidirectional, batch_first)
    return torch._VF.gru(input, batch_sizes, hx, weights, has_biases, num_layers, dropout,
                         train, bidirectional)


def _zeros_hidden(input, weights, num_layers, bidirectional, batch_first, hidden_size=None):
    """nn.GRU's default h0 for dense input (nn.GRU sizes it with its hidden_size, which the
    weights match unless they were re-assigned with other shapes)."""
    return torch.zeros(num_layers * (2 if bidirectional else 1),
                       input.size(0 if batch_first else 1),
                       weights[1].size(1) if hidden_size is None else hidden_size,
                       dtype=input.dtype, device=input.device)


def gru(
    input: Tensor,
    hx: Optional[Tensor],
    weights: Sequence[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool = False,
    batch_sizes: Optional[Tensor] = None,
    *,
    hidden_size: Optional[int] = None,
) -> Tuple[Tensor, Tensor]:
    """Multi-layer GRU over a whole sequence, the arguments of ``torch._VF.gru``.

    Dense: ``input`` is [T, N, C] ([N, T, C] if ``batch_first``) and the output [T, N, D*H]
    (a transposed view if ``batch_first``, as ATen returns). Packed: ``input`` is the
    PackedSequence's data [R, C] and ``batch_sizes`` its batch sizes; the output is [R, D*H].
    ``hx`` is [L*D, N, H] (None: zeros, dense input only); returns ``(output, h_n)``.
    ``hidden_size`` (the module's) sizes those zeros where torch's implementation is used;
    by default it is read from the weights.
    """
    if hx is None and batch_sizes is not None:
        D = 2 if bidirectional else 1
        hx = torch.zeros(num_layers * D, int(batch_sizes[0]), weights[1].size(1),
                         dtype=input.dtype, device=input.device)
    if not (type(has_biases) is bool and type(train) is bool and type(bidirectional) is bool
            and type(batch_first) is bool):
        # nn.GRU passes these to torch._VF.gru, whose argument parser rejects anything but a
        # bool (e.g. GRU(..., bidirectional=1)); let it raise its own TypeError.
        if hx is None:
            hx = _zeros_hidden(input, weights, num_layers, bidirectional, batch_first,
                               hidden_size)
        if batch_sizes is None:
            torch._VF.gru(input, hx, weights, has_biases, num_layers, dropout, train,
                          bidirectional, batch_first)
        else:
            torch._VF.gru(input, batch_sizes, hx, weights, has_biases, num_layers, dropout,
                          train, bidirectional)
        raise TypeError("gru_native: has_biases, train, bidirectional and batch_first must be "
                        "bools")
    device = input.device
    plain = _plain_eager((input, hx, *weights))
    if not (plain and device.type == "cpu" and input.dtype in _CPU_DTYPES):
        # Everything but the plain eager CPU call (which needs none of this: no export traces
        # it, CPU autocast does not touch it, and the direct CPU entry checks devices itself).
        if _torch_op_wanted():
            return _torch_gru(input, hx, weights, has_biases, num_layers, dropout, train,
                              bidirectional, batch_first, batch_sizes, hidden_size)
        if device.type == "cuda" and _cuda_autocast_dtype() is not None:
            # nn.GRU under CUDA autocast (cuDNN's autocast wrapper) runs in the autocast dtype:
            # input, h0 and weights cast to it, outputs in it.
            input, hx, weights = _cast_for_autocast(_cuda_autocast_dtype(), input, hx, weights)
        # Through the dispatcher, mixed devices would pick one device's kernel (a Meta input
        # would even get the fake kernel): check first, as ATen's check_attributes does. (The
        # kernels check again, and so does the direct CPU call.)
        _check_attributes(input, hx, weights)
        if not _has_kernel(device, input.dtype):
            # No kernel here (e.g. float16 on the CPU, where nn.GRU runs, or under CPU autocast
            # with a bfloat16 input): torch's own implementation, so that nothing nn.GRU runs
            # fails.
            _note_fallback(device, input.dtype)
            return _torch_gru(input, hx, weights, has_biases, num_layers, dropout, train,
                              bidirectional, batch_first, batch_sizes, hidden_size)

    caller_input = input
    if batch_sizes is None and batch_first:
        input = input.transpose(0, 1)
    # The empty-sequence and h0-dtype checks of ATen are made by the kernels (same messages).
    mask = None
    if dropout != 0 and train and num_layers > 1:
        rows = input.size(0) * (input.size(1) if batch_sizes is None else 1)
        width = (2 if bidirectional else 1) * weights[1].size(1)
        mask = _dropout_mask(float(dropout), num_layers, rows, width, input)
    need_workspace = torch.is_grad_enabled() and (
        input.requires_grad
        or (hx is not None and hx.requires_grad)
        or any(w.requires_grad for w in weights)
    )
    try:
        if not plain:
            output, hy, _, _ = _forward_op(
                input, hx, weights, batch_sizes, mask, has_biases, num_layers, bidirectional,
                need_workspace)
        elif need_workspace and device.type == "cpu":
            # The autograd node built in C++ (csrc/cpu/autograd.cpp): the same ops and
            # backward as _EagerGRU, without Python in the forward's or the backward's way.
            output, hy = _C._cpu_gru_train(input, weights, hx, batch_sizes, mask, has_biases,
                                           num_layers, bidirectional)
        elif need_workspace:
            output, hy = _EagerGRU.apply(input, hx, batch_sizes, mask, has_biases, num_layers,
                                         bidirectional, *weights)
        elif device.type == "cpu":
            # No gradient wanted, so nothing for autograd to record: the CPU implementation,
            # called directly.
            output, hy, _, _ = _C._cpu_gru_forward(
                input, hx, weights, batch_sizes, mask, has_biases, num_layers, bidirectional, False)
        else:
            # No gradient wanted: skip the autograd layer (its Python wrapper costs more than a
            # whole small GRU).
            with _BelowAutograd():
                output, hy, _, _ = _forward_op(
                    input, hx, weights, batch_sizes, mask, has_biases, num_layers, bidirectional,
                    False)
    except RuntimeError as err:
        # Weights of shapes the fused kernels do not take (e.g. a parameter re-assigned with
        # another shape): whatever nn.GRU does with them, its error or its result.
        if _is_compiling() or not str(err).startswith(("gru_native: weight_", "gru_native: bias_")):
            raise
        return _torch_gru(caller_input, hx, weights, has_biases, num_layers, dropout, train,
                          bidirectional, batch_first, batch_sizes, hidden_size)
    if batch_sizes is None and batch_first:
        output = output.transpose(0, 1)
    return output, hy


def gru_cell(
    input: Tensor,
    hx: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Optional[Tensor] = None,
    b_hh: Optional[Tensor] = None,
) -> Tensor:
    """One GRU step, the arguments of ``torch._VF.gru_cell``: input [N, C], hx [N, H] ->
    h' [N, H]. A one-step, one-layer run of the fused ops (one forward op, one backward op).
    Anything the fused path does not take as it is (inconsistent shapes, dtypes or devices, a
    dtype without a kernel) goes to torch's own cell, which raises nn.GRUCell's errors or
    computes nn.GRUCell's result."""
    has_biases = b_ih is not None
    if (input.device.type == "cpu" and input.dtype in _CPU_DTYPES
            and (b_hh is not None) == has_biases
            and _plain_eager((input, hx, w_ih, w_hh, b_ih, b_hh))):
        # The plain eager CPU call, straight to the C++ entries (the checks below cost more than
        # a small cell). The C++ checks every shape, dtype and device; anything it rejects goes
        # on to the checks below and torch's cell, which raises nn.GRUCell's error (or computes
        # nn.GRUCell's result).
        train = torch.is_grad_enabled() and (
            input.requires_grad or hx.requires_grad or w_ih.requires_grad or w_hh.requires_grad
            or (has_biases and (b_ih.requires_grad or b_hh.requires_grad)))
        try:
            return _C._cpu_gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh, train)
        except (RuntimeError, TypeError, ValueError, IndexError):
            pass
    H = hx.size(1) if hx.dim() == 2 else -1
    ok = (
        input.dim() == 2 and hx.dim() == 2 and (b_hh is not None) == has_biases
        and input.size(1) == w_ih.size(1) and input.size(0) == hx.size(0)
        and w_hh.size(1) == H and w_ih.dim() == 2 and w_hh.dim() == 2
        and w_ih.size(0) == 3 * H and w_hh.size(0) == 3 * H
        and (not has_biases or (b_ih.shape == (3 * H,) and b_hh.shape == (3 * H,)))
        and _has_kernel(input.device, input.dtype)
    )
    weights = [w_ih, w_hh] + ([b_ih, b_hh] if has_biases else [])
    if ok:
        ok = all(t.dtype == input.dtype and t.device == input.device for t in [hx] + weights)
    if not ok or _torch_op_wanted():
        return torch._VF.gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh)
    _, hy = gru(input.unsqueeze(0), hx.unsqueeze(0), weights, has_biases, 1, 0.0, False, False)
    return hy[0]
