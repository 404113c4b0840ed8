"""Quantized GRUs for inference on the CPU: ``quantize`` and ``quantization_error``.

``quantize(model, dtype=torch.qint8)`` replaces every GRU and GRUCell in ``model`` (gru_native's,
torch.nn's, and torch.ao's dynamically quantized ones) by a ``QuantizedGRU`` /
``QuantizedGRUCell``:

- ``torch.qint8``: weights int8, symmetric, one scale per output channel (row of W_ih / W_hh:
  ``scale = max|row| / 127``); activations float32, quantized per row inside the products only
  (129 symmetric levels, ``|q| <= 64``; torch.ao's x86 dynamic int8 uses 128 per tensor;
  ``csrc/cpu/qdot.h``: the sums are exact integers); biases, gates and the hidden state float32;
  nn.GRU's equations (linear before reset).
- ``torch.bfloat16``: weights bfloat16, everything else float32 (for models bound by the bytes
  of their weights, as step-wise calls are).

The modules are for inference: their forward raises in training mode or when a gradient is
wanted, naming the float module to train instead. Their ``state_dict`` holds the quantized
weights (``weight_ih_l0`` int8 and ``weight_ih_l0_scale`` float32, ...); they pickle, and
``torch.compile(fullgraph=True)`` and ``torch.export`` see one ``gru_native::quantized_gru`` op
per module (its fake kernel: gru_native/_registration.py).
"""

from __future__ import annotations

import math
import operator
import warnings
from typing import Dict, Iterable, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence

from . import _C, _route
from .gru import GRU, GRUCell, cell_call, sequence_call

__all__ = ["QuantizedGRU", "QuantizedGRUCell", "quantize", "quantization_error"]

_quantized_op = torch.ops.gru_native.quantized_gru.default
_VERSION = operator.attrgetter("_version")
DTYPES = (torch.qint8, torch.bfloat16)


def quantize_weight(w: Tensor) -> Tuple[Tensor, Tensor]:
    """A float weight [rows, cols] as (int8 [rows, cols], float32 scale [rows]): per row,
    symmetric, ``scale = max|row| / 127`` (1 for a row of zeros), ``q = round(w / scale)``."""
    w = w.detach().to(torch.float64)
    amax = w.abs().amax(dim=1) if w.numel() else w.new_zeros(w.size(0))
    scale = torch.where(amax > 0, amax / 127, torch.ones_like(amax)).to(torch.float32)
    q = torch.round(w / scale.to(torch.float64)[:, None]).clamp_(-127, 127)
    return q.to(torch.int8), scale


def _int8_panels(w: Tensor) -> Tensor:
    """An int8 GRU weight [3H, K] in the panel layout of csrc/cpu/qdot.h (1-D), which the eager
    products read as one sequential stream per 8 rows: made by the extension
    (``_C.int8_panels``), where the layout and its reader are defined."""
    return _C.int8_panels(w)


def _from_torch_quantized(w: Tensor) -> Tuple[Tensor, Tensor]:
    """torch.ao's quantized weight (per tensor or per output channel, zero point 0) as its own int8
    values and per-row scales, unchanged; any other scheme re-quantized from its float values."""
    scheme = w.qscheme()
    if scheme in (torch.per_tensor_affine, torch.per_tensor_symmetric) and w.q_zero_point() == 0:
        return w.int_repr(), torch.full((w.size(0),), w.q_scale(), dtype=torch.float32)
    if (scheme in (torch.per_channel_affine, torch.per_channel_symmetric)
            and w.q_per_channel_axis() == 0 and not w.q_per_channel_zero_points().any()):
        return w.int_repr(), w.q_per_channel_scales().to(torch.float32)
    return quantize_weight(w.dequantize())


def _inference_only(module: nn.Module, tensors) -> None:
    if module.training or (torch.is_grad_enabled()
                           and any(t is not None and t.requires_grad for t in tensors)):
        float_name = type(module).__name__.replace("Quantized", "")
        raise RuntimeError(
            f"gru_native.{type(module).__name__} is for inference: it has no gradients and runs "
            f"in eval mode only. To train, train the float32 gru_native.{float_name} (or "
            f"torch.nn.{float_name}) it was made from and quantize it again; for inference, call "
            f".eval() and pass inputs that do not require grad.")


def _direct_call(module: nn.Module, input, hx) -> bool:
    """Whether a call may try the modules' direct C++ entries (``_C.quantized_cell_direct``,
    ``_C.quantized_gru_direct``): eval mode, plain tensors, plain eager. The entries return None
    for anything the Python path would raise for or treat otherwise (a gradient wanted, another
    dtype, device, rank or size), and the caller then takes that path: its errors are the
    only ones."""
    return (not module.training and _route.quantized_route((input, hx)) is _route.DIRECT
            and type(input) is Tensor and (hx is None or type(hx) is Tensor)
            and _own_checks(module))


_OWN_CHECKS: Dict[type, bool] = {}


def _own_checks(module: nn.Module) -> bool:
    """Whether the module runs its class's own checks (``_checks``: what the Python path calls,
    which the direct entries do in C++): not a subclass's or an instance's replacements, which
    only the Python path would call."""
    cls = type(module)
    own = _OWN_CHECKS.get(cls)
    if own is None:
        base = next(b for b in (QuantizedGRU, QuantizedGRUCell) if issubclass(cls, b))
        own = _OWN_CHECKS[cls] = all(getattr(cls, n) is getattr(base, n) for n in base._checks)
    return own and not any(n in module.__dict__ for n in module._checks)


class _QuantizedBase(nn.Module):
    """What QuantizedGRU and QuantizedGRUCell share: the weights (buffers named as nn.GRU's
    parameters, with ``_scale`` buffers for int8), their loading, and the op call."""

    def _init_weights(self, shapes: Dict[str, Tuple[int, ...]], bias: bool, dtype: torch.dtype):
        if dtype not in DTYPES:
            raise ValueError(f"gru_native: quantized weights are torch.qint8 or torch.bfloat16, "
                             f"got {dtype}")
        self.weight_dtype = dtype
        storage = torch.int8 if dtype == torch.qint8 else torch.bfloat16
        self._weight_names = []
        for name, shape in shapes.items():
            if name.startswith("weight"):
                self.register_buffer(name, torch.zeros(shape, dtype=storage))
                if dtype == torch.qint8:
                    self.register_buffer(name + "_scale", torch.ones(shape[0]))
            elif bias:
                self.register_buffer(name, torch.zeros(shape))
            else:
                continue
            self._weight_names.append(name)
        self.eval()

    def _set_weights(self, weights: Dict[str, Tensor]) -> None:
        """From float weights and biases (or torch.ao's quantized weights), by name."""
        with torch.no_grad():
            for name in self._weight_names:
                w = weights[name]
                if not name.startswith("weight"):
                    getattr(self, name).copy_(w)
                elif self.weight_dtype == torch.bfloat16:
                    getattr(self, name).copy_(w.dequantize() if w.is_quantized else w)
                else:
                    q, scale = _from_torch_quantized(w) if w.is_quantized else quantize_weight(w)
                    getattr(self, name).copy_(q)
                    getattr(self, name + "_scale").copy_(scale)

    def _flat(self) -> Tuple[list, list]:
        """(weights in nn.GRU's _flat_weights order, scales in the op's order)."""
        # The buffers as getattr would return them (nn.Module.__getattr__ costs more than a
        # small cell); a name no longer in _buffers goes through the attribute.
        buffers = self._buffers
        weights = [buffers[n] if n in buffers else getattr(self, n) for n in self._weight_names]
        if self.weight_dtype != torch.qint8:
            return weights, []
        return weights, [buffers[s] if s in buffers else getattr(self, s)
                         for s in (n + "_scale" for n in self._weight_names
                                   if n.startswith("weight"))]

    def repack(self) -> None:
        """Rebuild the int8 weights' panel copy at the next call (only needed after writing a
        weight buffer through ``.data`` or numpy: other changes are seen by themselves)."""
        self.__dict__.pop("_direct_cache", None)

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_direct_cache", None)  # holds a copy of the buffers: rebuilt at the first call
        return state

    def _direct_args(self) -> tuple:
        """(weights, scales, panels): the direct entries' arguments, kept between calls. panels:
        the int8 weight matrices in the layout the products read as one stream each
        (``_int8_panels``), a copy kept beside the buffers (not in the state_dict, not pickled).
        All of it is rebuilt when a buffer the op reads is another tensor or an int8 matrix was
        written in place (its version counter moved). Writes that bypass version counters
        (through ``.data`` or numpy) are not seen: call ``repack()`` after those."""
        cache = self.__dict__.get("_direct_cache")
        if cache is not None:
            names, tensors, matrices, versions, args = cache
            if (all(map(operator.is_, map(self._buffers.get, names), tensors))
                    and list(map(_VERSION, matrices)) == versions):
                return args
        weights, scales = self._flat()
        names = list(self._weight_names)
        matrices = []
        if scales:
            names += [n + "_scale" for n in self._weight_names if n[0] == "w"]
            matrices = [w for n, w in zip(self._weight_names, weights) if n[0] == "w"]
        with torch.no_grad():
            panels = [_int8_panels(w) for w in matrices]
        args = (weights, scales, panels)
        self.__dict__["_direct_cache"] = (names, weights + scales, matrices,
                                          list(map(_VERSION, matrices)), args)
        return args

    def _call_op(self, input, hx, batch_sizes, num_layers, bidirectional):
        if _route.quantized_route((input, hx)) is _route.DIRECT:
            weights, scales, panels = self._direct_args()
            return _C.quantized_gru(input, hx, weights, scales, batch_sizes, self.bias,
                                    num_layers, bidirectional, panels)
        # Traced or dispatched: the buffers as stored (the products read their rows in place).
        weights, scales = self._flat()
        return _quantized_op(input, hx, weights, scales, batch_sizes, self.bias, num_layers,
                             bidirectional)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A float state_dict would be cast into the int8 buffers silently: refuse it by name.
        for name, buffer in self._buffers.items():
            given = state_dict.get(prefix + name)
            if given is not None and given.dtype != buffer.dtype:
                error_msgs.append(
                    f"{prefix + name} is {given.dtype} but this {type(self).__name__} keeps "
                    f"{buffer.dtype} ({self.weight_dtype} weights): load a float state_dict "
                    f"into the float module and quantize it, or a state_dict of a "
                    f"{type(self).__name__} of the same dtype")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)


class QuantizedGRU(_QuantizedBase):
    r"""An inference-only GRU with int8 (per-output-channel) or bfloat16 weights and float32
    activations: ``torch.nn.GRU``'s forward (input, ``h_0``, ``batch_first``, unbatched input,
    PackedSequence; outputs ``(output, h_n)`` in float32) on the CPU, computing nn.GRU's
    equations with the quantized weights. Made by ``gru_native.quantize`` or
    ``QuantizedGRU.from_float(module, dtype)``; dropout does not apply (eval mode only)."""

    check_forward_args = nn.RNNBase.check_forward_args
    get_expected_hidden_size = nn.RNNBase.get_expected_hidden_size
    check_hidden_size = nn.RNNBase.check_hidden_size
    permute_hidden = nn.RNNBase.permute_hidden
    # What the Python path calls and the direct entry does itself (_own_checks).
    _checks = ("check_input", "check_forward_args", "get_expected_hidden_size",
               "check_hidden_size", "permute_hidden", "_run")

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype: torch.dtype = torch.qint8) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.dropout = bias, batch_first, float(dropout)
        self.bidirectional, self.proj_size = bidirectional, 0
        D = 2 if bidirectional else 1
        shapes = {}
        for layer in range(num_layers):
            for suffix in ["", "_reverse"][:D]:
                cols = input_size if layer == 0 else D * hidden_size
                shapes[f"weight_ih_l{layer}{suffix}"] = (3 * hidden_size, cols)
                shapes[f"weight_hh_l{layer}{suffix}"] = (3 * hidden_size, hidden_size)
                shapes[f"bias_ih_l{layer}{suffix}"] = (3 * hidden_size,)
                shapes[f"bias_hh_l{layer}{suffix}"] = (3 * hidden_size,)
        self._init_weights(shapes, bias, dtype)

    @classmethod
    def from_float(cls, module: nn.Module, dtype: torch.dtype = torch.qint8) -> "QuantizedGRU":
        """From an nn.GRU, a gru_native.GRU or torch.ao's dynamically quantized GRU (its own int8
        values are kept where its scheme is symmetric per tensor or per channel)."""
        new = cls(module.input_size, module.hidden_size, module.num_layers, module.bias,
                  module.batch_first, module.dropout, module.bidirectional, dtype)
        new._set_weights(_source_weights(module))
        return new

    def check_input(self, input: Tensor, batch_sizes: Optional[Tensor]) -> None:
        # nn.RNNBase.check_input's checks and messages, the dtype being the activations'.
        if input.dtype != torch.float32:
            raise ValueError(f"RNN input dtype ({input.dtype}) does not match the quantized GRU's "
                             f"activations (torch.float32). Convert input: "
                             f"input.to(torch.float32)")
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(
                f"input must have {expected_input_dim} dimensions, got {input.dim()}")
        if self.input_size != input.size(-1):
            raise RuntimeError(f"input.size(-1) must be equal to input_size. Expected "
                               f"{self.input_size}, got {input.size(-1)}")

    def forward(self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None):
        if _direct_call(self, input, hx):
            # Plain eager, a dense [T, N, C] / [N, T, C] float32 input: one C++ entry with the
            # checks below (None when any would fail or anything else applies).
            result = _C.quantized_gru_direct(input, hx, *self._direct_args(), self.bias,
                                             self.num_layers, self.bidirectional,
                                             self.batch_first, self.input_size,
                                             self.hidden_size)
            if result is not None:
                return result
        data = input.data if isinstance(input, PackedSequence) else input
        _inference_only(self, (data, hx))
        return sequence_call(self, input, hx, self._run)

    def _run(self, input: Tensor, hx: Optional[Tensor], batch_sizes: Optional[Tensor]):
        if batch_sizes is None and self.batch_first:
            input = input.transpose(0, 1)
        output, hy = self._call_op(input, hx, batch_sizes, self.num_layers, self.bidirectional)
        if batch_sizes is None and self.batch_first:
            output = output.transpose(0, 1)
        return output, hy

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + f", dtype={self.weight_dtype}"


class QuantizedGRUCell(_QuantizedBase):
    r"""An inference-only GRUCell with int8 (per-output-channel) or bfloat16 weights and float32
    activations: ``torch.nn.GRUCell``'s forward (input ``(N, C)`` or ``(C)``, hidden optional)
    on the CPU. Made by ``gru_native.quantize`` or ``QuantizedGRUCell.from_float``."""

    _checks = ("_run",)  # what the Python path calls and the direct entry does itself

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dtype: torch.dtype = torch.qint8) -> None:
        super().__init__()
        self.input_size, self.hidden_size, self.bias = input_size, hidden_size, bias
        self._init_weights({"weight_ih": (3 * hidden_size, input_size),
                            "weight_hh": (3 * hidden_size, hidden_size),
                            "bias_ih": (3 * hidden_size,), "bias_hh": (3 * hidden_size,)},
                           bias, dtype)

    @classmethod
    def from_float(cls, module: nn.Module,
                   dtype: torch.dtype = torch.qint8) -> "QuantizedGRUCell":
        """From an nn.GRUCell, a gru_native.GRUCell or torch.ao's dynamically quantized
        GRUCell."""
        new = cls(module.input_size, module.hidden_size, module.bias, dtype)
        new._set_weights(_source_weights(module))
        return new

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        if _direct_call(self, input, hx):
            # Plain eager: one C++ entry with the checks below (None when any would fail).
            result = _C.quantized_cell_direct(input, hx, *self._direct_args(), self.bias,
                                              self.input_size, self.hidden_size)
            if result is not None:
                return result
        _inference_only(self, (input, hx))
        if input.dtype != torch.float32:
            raise ValueError(f"gru_native.QuantizedGRUCell takes float32 input, got "
                             f"{input.dtype}")
        return cell_call(self, input, hx, self._run)

    def _run(self, input: Tensor, hx: Tensor) -> Tensor:
        # nn.GRUCell's checks and messages (torch's gru_cell).
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {self.input_size}")
        if input.size(0) != hx.size(0):
            raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden0 batch "
                               f"size {hx.size(0)}")
        if hx.size(1) != self.hidden_size:
            raise RuntimeError(f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, "
                               f"expected {self.hidden_size}")
        _, hy = self._call_op(input.unsqueeze(0), hx.unsqueeze(0), None, 1, False)
        return hy[0]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        return s + (", bias=False" if not self.bias else "") + f", dtype={self.weight_dtype}"


def _is_torch_ao(module: nn.Module) -> bool:
    """torch.ao's dynamically quantized GRU or GRUCell (recognised without importing torch.ao,
    which warns of its deprecation)."""
    return type(module).__module__.startswith("torch.ao.nn.quantized.dynamic")


def _source_weights(module: nn.Module) -> Dict[str, Tensor]:
    """A float or torch.ao module's weights and biases by nn.GRU's names (torch.ao's weights
    as its quantized tensors)."""
    if _is_torch_ao(module):
        return {**module.get_weight(), **module.get_bias()}
    return dict(module.named_parameters())


_FLOAT_CLASSES = {nn.GRU: QuantizedGRU, GRU: QuantizedGRU,
                  nn.GRUCell: QuantizedGRUCell, GRUCell: QuantizedGRUCell}


def _quantized_class(module: nn.Module):
    cls = _FLOAT_CLASSES.get(type(module))
    if cls is None and _is_torch_ao(module):
        cls = {"GRU": QuantizedGRU, "GRUCell": QuantizedGRUCell}.get(type(module).__name__)
    return cls


def quantize(model: nn.Module, dtype: torch.dtype = torch.qint8) -> nn.Module:
    """Replaces every GRU and GRUCell in ``model``, at any depth (``torch.nn.GRU``,
    ``gru_native.GRU``, torch.ao's dynamically quantized GRU, and the GRUCells), by a
    ``QuantizedGRU`` / ``QuantizedGRUCell`` with ``dtype`` weights (``torch.qint8`` or
    ``torch.bfloat16``) and float32 activations, in eval mode, on the CPU. The model is changed in
    place and returned (if ``model`` is itself a GRU, the new module is returned), as ``convert``
    does. Subclasses and parametrized GRUs are left as they are.

        reference = copy.deepcopy(model)
        model = gru_native.quantize(model)                 # int8 weights
        print(gru_native.quantization_error(model, reference, batches))
    """
    if dtype not in DTYPES:
        raise ValueError(f"gru_native.quantize: dtype must be torch.qint8 or torch.bfloat16, "
                         f"got {dtype}")
    cls = _quantized_class(model)
    if cls is not None:
        if parametrize.is_parametrized(model):
            warnings.warn(f"{type(model).__name__} with parametrizations is left unquantized",
                          stacklevel=2)
            return model
        return cls.from_float(model, dtype)
    for name, child in list(model._modules.items()):
        if child is not None:
            new = quantize(child, dtype)
            if new is not child:
                model._modules[name] = new
    return model


def _tensors(out) -> list:
    if isinstance(out, Tensor):
        return [out]
    if isinstance(out, PackedSequence):
        return [out.data]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


@torch.no_grad()
def quantization_error(quantized: nn.Module, reference: nn.Module,
                       inputs: Union[Tensor, Iterable]) -> Dict[str, float]:
    """The error of ``quantized``'s outputs against ``reference``'s (the float model it was made
    from: keep a ``copy.deepcopy`` before quantizing) on the caller's data. ``inputs``: one
    batch, or an iterable of batches; a batch is a tensor or a tuple of positional arguments.
    Every floating-point tensor either model returns (nested in tuples, lists, dicts, or a
    PackedSequence's data) is compared, in float64. Returns ``max_abs``, ``mean_abs``, ``rms``,
    the reference's ``ref_rms`` and ``rel_rms = rms / ref_rms``."""
    batches = [inputs] if isinstance(inputs, Tensor) else inputs
    total_abs = total_sq = ref_sq = 0.0
    count, max_abs = 0, 0.0
    for batch in batches:
        args = batch if isinstance(batch, tuple) else (batch,)
        got, want = _tensors(quantized(*args)), _tensors(reference(*args))
        if len(got) != len(want):
            raise ValueError(f"the models return {len(got)} and {len(want)} tensors")
        for g, w in zip(got, want):
            if not w.is_floating_point():
                continue
            diff = g.double() - w.double()
            max_abs = max(max_abs, diff.abs().max().item() if diff.numel() else 0.0)
            total_abs += diff.abs().sum().item()
            total_sq += diff.square().sum().item()
            ref_sq += w.double().square().sum().item()
            count += diff.numel()
    if count == 0:
        raise ValueError("quantization_error: no floating-point outputs to compare")
    rms, ref_rms = math.sqrt(total_sq / count), math.sqrt(ref_sq / count)
    return {"max_abs": max_abs, "mean_abs": total_abs / count, "rms": rms, "ref_rms": ref_rms,
            "rel_rms": rms / ref_rms if ref_rms > 0 else math.inf}
