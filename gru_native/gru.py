"""gru_native.GRU: a drop-in replacement for torch.nn.GRU running on the fused gru_native ops."""

from __future__ import annotations

from typing import Optional, Tuple, Union, overload

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import ops

__all__ = ["GRU", "GRUCell"]

_Proxy = torch.fx.Proxy


def _fx_leaf_call(module: nn.Module, input, hx):
    """Under torch.fx symbolic tracing, the node FX records for nn.GRU and nn.GRUCell: one
    call_module (FX keeps torch.nn's modules as leaves; ours, defined elsewhere, would be traced
    into, and their shape checks cannot run on proxies). None when not tracing."""
    data = input.data if isinstance(input, PackedSequence) else input
    proxy = data if isinstance(data, _Proxy) else hx if isinstance(hx, _Proxy) else None
    if proxy is None:
        return None
    args = (input,) if hx is None else (input, hx)
    return proxy.tracer.create_proxy("call_module", proxy.tracer.path_of_module(module), args, {})


class GRU(nn.RNNBase):
    r"""__init__(input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0, bidirectional=False, device=None, dtype=None)

    A multi-layer gated recurrent unit, with exactly the interface of :class:`torch.nn.GRU`
    (constructor, parameters and their names, initialisation, ``state_dict``, shapes,
    PackedSequence handling, dropout, errors) computed by fused C++/CUDA kernels: one op call for
    the whole stack forward, one for the whole backward.

    For each element of the input sequence each layer computes (gate order r, z, n)::

        r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)
        z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)
        n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))
        h_t = (1 - z_t) * n_t + z_t * h_{t-1}

    The input of layer ``l >= 1`` is the output of layer ``l - 1``, times a dropout mask in
    training when ``dropout > 0`` (drawn from torch's generator as nn.GRU draws it on the CPU).

    Args:
        input_size: features of the input ``x``.
        hidden_size: features of the hidden state ``h``.
        num_layers: stacked GRU layers. Default: 1
        bias: if ``False``, no ``b_ih`` and ``b_hh``. Default: ``True``
        batch_first: if ``True``, input and output are ``(N, L, H_in)`` / ``(N, L, D * H_out)``
            (never the hidden state). Default: ``False``
        dropout: probability of zeroing the output of every layer but the last, in training.
            Default: 0
        bidirectional: if ``True``, a bidirectional GRU. Default: ``False``

    Inputs: input, h_0
        * **input**: ``(L, H_in)`` unbatched, ``(L, N, H_in)``, or ``(N, L, H_in)`` with
          ``batch_first=True``; or a :class:`~torch.nn.utils.rnn.PackedSequence`.
        * **h_0**: ``(D * num_layers, H_out)`` or ``(D * num_layers, N, H_out)``; zeros if not
          given.

    Outputs: output, h_n
        * **output**: ``(L, D * H_out)``, ``(L, N, D * H_out)`` or ``(N, L, D * H_out)``: the
          last layer's ``h_t`` for every ``t`` (both directions concatenated); a PackedSequence
          if the input was one.
        * **h_n**: ``(D * num_layers, H_out)`` or ``(D * num_layers, N, H_out)``: the final
          state of every layer and direction (index ``layer * D + direction``).

    with N = batch size, L = sequence length, D = 2 if bidirectional else 1,
    H_in = input_size, H_out = hidden_size.

    Attributes:
        weight_ih_l[k]: ``(3*hidden_size, input_size)`` for ``k = 0``, else
            ``(3*hidden_size, D*hidden_size)``, rows (W_ir|W_iz|W_in)
        weight_hh_l[k]: ``(3*hidden_size, hidden_size)``, rows (W_hr|W_hz|W_hn)
        bias_ih_l[k]: ``(3*hidden_size)``, (b_ir|b_iz|b_in)
        bias_hh_l[k]: ``(3*hidden_size)``, (b_hr|b_hz|b_hn)
        (``_reverse`` suffix for the reverse direction.) All are initialised from
        ``U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))``.

    Example::

        >>> rnn = gru_native.GRU(10, 20, 2)
        >>> input = torch.randn(5, 3, 10)
        >>> h0 = torch.randn(2, 3, 20)
        >>> output, hn = rnn(input, h0)
    """

    @overload
    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
    ) -> None: ...

    @overload
    def __init__(self, *args, **kwargs) -> None: ...

    def __init__(self, *args, **kwargs):
        # nn.GRU's own constructor, argument for argument (validation, parameters, init).
        if "proj_size" in kwargs:
            raise ValueError("proj_size argument is only supported for LSTM, not RNN or GRU")
        super().__init__("GRU", *args, **kwargs)

    def _weights_have_changed(self) -> bool:
        # nn.RNNBase's check, run at every forward: has any weight attribute stopped being the
        # object cached in _flat_weights (torch.func.functional_call, re-assignment)? Same
        # semantics, with the attribute lookups done in the module's dicts instead of through
        # hasattr + getattr + Module.__getattr__ (most of the Python cost of a small forward).
        # Subclasses (e.g. the ones torch.nn.utils.parametrize creates, whose properties shadow
        # the weights) take nn.RNNBase's path.
        if type(self) is not GRU:
            return super()._weights_have_changed()
        inst = self.__dict__
        params = inst["_parameters"]
        buffers = inst["_buffers"]
        for ref, name in zip(self._flat_weight_refs, self._flat_weights_names):
            weight = inst.get(name)
            if weight is None:
                weight = params.get(name)
            if weight is None:
                weight = buffers.get(name)
            if weight is not None and ref is not None and ref() is not weight:
                return True
        return False

    def flatten_parameters(self) -> None:
        """A no-op: the gru_native kernels read each parameter where it is, on every device, so
        there is no cuDNN weight buffer to compact (nn.GRU's is a no-op off cuDNN too)."""

    @overload
    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]: ...

    @overload
    def forward(
        self, input: PackedSequence, hx: Optional[Tensor] = None
    ) -> Tuple[PackedSequence, Tensor]: ...

    def forward(
        self, input: Union[Tensor, PackedSequence], hx: Optional[Tensor] = None
    ) -> Tuple[Union[Tensor, PackedSequence], Tensor]:
        traced = _fx_leaf_call(self, input, hx)
        if traced is not None:
            return traced
        self._update_flat_weights()
        return sequence_call(self, input, hx, self._run)

    def _run(self, input: Tensor, hx: Optional[Tensor], batch_sizes: Optional[Tensor]):
        return ops.gru(input, hx, self._flat_weights, self.bias, self.num_layers, self.dropout,
                       self.training, self.bidirectional, self.batch_first, batch_sizes,
                       hidden_size=self.hidden_size)


def sequence_call(module: nn.Module, input: Union[Tensor, PackedSequence],
                  hx: Optional[Tensor], run):
    """nn.GRU.forward's steps around its op, with its checks and messages, in its order, for any
    module with nn.RNNBase's attributes and check methods (GRU, QuantizedGRU): PackedSequence
    unpacked (hx permuted, or zeros), unbatched input given a batch dimension, the input and hx
    checked; then ``run(input, hx, batch_sizes)`` -> (output, h_n) (hx None: zeros, dense input
    only), and the output packed or unbatched again."""
    orig_input = input
    num_directions = 2 if module.bidirectional else 1
    if isinstance(orig_input, PackedSequence):
        input, batch_sizes, sorted_indices, unsorted_indices = input
        max_batch_size = batch_sizes[0]
        if hx is None:
            hx = torch.zeros(
                module.num_layers * num_directions,
                max_batch_size,
                module.hidden_size,
                dtype=input.dtype,
                device=input.device,
            )
        else:
            # Each batch of the hidden state should match the input sequence that
            # the user believes he/she is passing in.
            hx = module.permute_hidden(hx, sorted_indices)
    else:
        batch_sizes = None
        dim = input.dim()
        if dim not in (2, 3):
            raise ValueError(f"GRU: Expected input to be 2D or 3D, got {dim}D instead")
        is_batched = dim == 3
        batch_dim = 0 if module.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                if hx.dim() != 2:
                    raise RuntimeError(
                        f"For unbatched 2-D input, hx should also be 2-D but got {hx.dim()}-D tensor"
                    )
                hx = hx.unsqueeze(1)
        else:
            if hx is not None and hx.dim() != 3:
                raise RuntimeError(
                    f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor"
                )

    if hx is None and module.proj_size == 0:
        # nn.GRU creates zeros here and checks their (always right) size; the op takes None
        # for zeros, which saves a tensor on the fast path.
        module.check_input(input, batch_sizes)
    else:
        if hx is None:  # only with the proj_size quirk, whose check then fails as nn.GRU's
            hx = torch.zeros(
                module.num_layers * num_directions,
                input.size(0) if module.batch_first else input.size(1),
                module.hidden_size,
                dtype=input.dtype,
                device=input.device,
            )
        module.check_forward_args(input, hx, batch_sizes)
    output, hidden = run(input, hx, batch_sizes)
    if isinstance(orig_input, PackedSequence):
        output_packed = PackedSequence(
            output, batch_sizes, sorted_indices, unsorted_indices
        )
        return output_packed, module.permute_hidden(hidden, unsorted_indices)
    if not is_batched:
        output = output.squeeze(batch_dim)
        hidden = hidden.squeeze(1)
    return output, hidden


class GRUCell(nn.RNNCellBase):
    r"""__init__(input_size, hidden_size, bias=True, device=None, dtype=None)

    One gated recurrent unit step, with exactly the interface of :class:`torch.nn.GRUCell`
    (constructor, parameters ``weight_ih [3H, C]``, ``weight_hh [3H, H]``, ``bias_ih``,
    ``bias_hh`` (None when ``bias=False``), initialisation, 1-D or 2-D input, errors), computed
    by the fused gru_native ops: one op call forward, one backward::

        r  = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z  = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n  = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    Inputs: input ``(N, C)`` or ``(C)``; hidden ``(N, H)`` or ``(H)``, zeros if not given.
    Output: h' ``(N, H)`` or ``(H)``.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(input_size, hidden_size, bias, num_chunks=3, device=device,
                         dtype=dtype)

    def forward(self, input: Tensor, hx: Optional[Tensor] = None) -> Tensor:
        traced = _fx_leaf_call(self, input, hx)
        if traced is not None:
            return traced
        return cell_call(self, input, hx, self._run)

    def _run(self, input: Tensor, hx: Tensor) -> Tensor:
        params = self._parameters
        if ("weight_ih" in params and "weight_hh" in params and "bias_ih" in params
                and "bias_hh" in params):
            # The parameters as self.weight_ih etc. would return them (nn.Module.__getattr__
            # costs more than a small cell); a parametrized weight is no longer in
            # _parameters and goes through the attribute.
            return ops.gru_cell(input, hx, params["weight_ih"], params["weight_hh"],
                                params["bias_ih"], params["bias_hh"])
        return ops.gru_cell(input, hx, self.weight_ih, self.weight_hh, self.bias_ih,
                            self.bias_hh)


def cell_call(module: nn.Module, input: Tensor, hx: Optional[Tensor], run) -> Tensor:
    """nn.GRUCell.forward's steps around its op, with its messages (GRUCell, QuantizedGRUCell):
    1-D input given a batch dimension, hx zeros when None; then ``run(input, hx)`` -> h' and
    the batch dimension dropped again."""
    if input.dim() not in (1, 2):
        raise ValueError(
            f"GRUCell: Expected input to be 1D or 2D, got {input.dim()}D instead"
        )
    if hx is not None and hx.dim() not in (1, 2):
        raise ValueError(
            f"GRUCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead"
        )
    is_batched = input.dim() == 2
    if not is_batched:
        input = input.unsqueeze(0)
    if hx is None:
        hx = torch.zeros(
            input.size(0), module.hidden_size, dtype=input.dtype, device=input.device
        )
    else:
        hx = hx.unsqueeze(0) if not is_batched else hx
    ret = run(input, hx)
    if not is_batched:
        ret = ret.squeeze(0)
    return ret
