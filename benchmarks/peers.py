"""Peers: implementations outside torch and gru_native, timed beside them when installed.

Each peer is a Peer in PEERS: its name (the column and the JSON key), the modules it needs, when
it applies (mode, device, dtype) and how to build its runner from nn.GRU's weights. A peer whose
modules are missing is left out, with one line on stderr saying so (the tables on stdout are those
of a run without it). A new peer is one more entry in PEERS.

Today: ONNX Runtime's GRU operator and OpenVINO's (the same ONNX graph, compiled by OpenVINO for
the CPU with INFERENCE_PRECISION_HINT f32, so that it computes in float32 like the others), for
dense float32 inference on the CPU; each one's output is checked against nn.GRU's before it is
timed.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

import torch
from torch import nn

ORT = "onnxruntime"
OPENVINO = "OpenVINO f32"

Runner = Callable[[], None]


@dataclass(frozen=True)
class Peer:
    name: str
    requires: Sequence[str]  # modules that must be importable
    install: str             # what to run when they are not
    applies: Callable[[str, str, torch.dtype], bool]  # (mode, device, dtype)
    build: Callable[[nn.GRU, torch.Tensor, Optional[torch.Tensor]], Runner]  # ref, x, hx

    def missing(self) -> Sequence[str]:
        return [m for m in self.requires if importlib.util.find_spec(m) is None]


_reported = set()


def peer_runners(ref: nn.GRU, x: torch.Tensor, hx: Optional[torch.Tensor], mode: str,
                 device: str, dtype: torch.dtype) -> Dict[str, Runner]:
    """name -> runner for every peer in PEERS that applies to this dense case and is installed;
    the first time a peer that applies is missing, a line on stderr says so."""
    runners = {}
    for peer in PEERS:
        if not peer.applies(mode, device, dtype):
            continue
        missing = peer.missing()
        if missing:
            if peer.name not in _reported:
                _reported.add(peer.name)
                print(f"# peer {peer.name} skipped: {', '.join(missing)} not installed "
                      f"({peer.install})", file=sys.stderr)
            continue
        runners[peer.name] = peer.build(ref, x, hx)
    return runners


# -- ONNX Runtime's GRU operator ------------------------------------------------------------------


def onnx_gru_model(ref: nn.GRU, T: int, N: int, with_h0: bool = False):
    """ref as an ONNX graph of GRU operators (one per layer, linear_before_reset=1). ONNX orders
    the gates z, r, h where PyTorch has r, z, n; layers are chained through
    Transpose + Reshape of Y [T, D, N, H] into [T, N, D*H]. with_h0: one more input, H0
    [L*D, N, H] (nn.GRU's h_0), sliced per layer into the operators' initial_h."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    H, L = ref.hidden_size, ref.num_layers
    D = 2 if ref.bidirectional else 1

    def zrn(w):  # PyTorch's (r, z, n) blocks -> ONNX's (z, r, h)
        r, z, n = w.detach().chunk(3, 0)
        return torch.cat([z, r, n], 0)

    def int64(values, name):
        return numpy_helper.from_array(torch.tensor(values, dtype=torch.int64).numpy(), name)

    nodes, inits, x_name, hns = [], [], "X", []
    for layer in range(L):
        sfx = [""] + (["_reverse"] if D == 2 else [])
        w = torch.stack([zrn(getattr(ref, f"weight_ih_l{layer}{s}")) for s in sfx])
        r = torch.stack([zrn(getattr(ref, f"weight_hh_l{layer}{s}")) for s in sfx])
        if ref.bias:
            b = torch.stack([torch.cat([zrn(getattr(ref, f"bias_ih_l{layer}{s}")),
                                        zrn(getattr(ref, f"bias_hh_l{layer}{s}"))]) for s in sfx])
        else:
            b = torch.zeros(D, 6 * H)
        for name, t in ((f"W{layer}", w), (f"R{layer}", r), (f"B{layer}", b)):
            inits.append(numpy_helper.from_array(t.float().numpy(), name))
        gru_inputs = [x_name, f"W{layer}", f"R{layer}", f"B{layer}"]
        if with_h0:
            for name, v in ((f"H0s{layer}", layer * D), (f"H0e{layer}", (layer + 1) * D)):
                inits.append(int64([v], name))
            nodes.append(helper.make_node("Slice", ["H0", f"H0s{layer}", f"H0e{layer}", "axis0"],
                                          [f"H0_{layer}"]))
            gru_inputs += ["", f"H0_{layer}"]  # no sequence_lens
        nodes.append(helper.make_node(
            "GRU", gru_inputs, [f"Y{layer}", f"Yh{layer}"],
            hidden_size=H, linear_before_reset=1,
            direction="bidirectional" if D == 2 else "forward"))
        nodes.append(helper.make_node("Transpose", [f"Y{layer}"], [f"Yt{layer}"],
                                      perm=[0, 2, 1, 3]))
        nodes.append(helper.make_node("Reshape", [f"Yt{layer}", "shape3"], [f"X{layer + 1}"]))
        x_name = f"X{layer + 1}"
        hns.append(f"Yh{layer}")
    inits.append(int64([0, 0, -1], "shape3"))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [T, N, ref.input_size])]
    if with_h0:
        inits.append(int64([0], "axis0"))
        inputs.append(helper.make_tensor_value_info("H0", TensorProto.FLOAT, [L * D, N, H]))
    nodes.append(helper.make_node("Identity", [x_name], ["output"]))
    nodes.append(helper.make_node("Concat", hns, ["h_n"], axis=0))
    graph = helper.make_graph(
        nodes, "gru", inputs,
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [T, N, D * H]),
         helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [L * D, N, H])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    onnx.checker.check_model(model)
    return model


def onnxruntime_runner(ref: nn.GRU, x: torch.Tensor,
                       hx: Optional[torch.Tensor] = None) -> Runner:
    """An ONNX Runtime session running ref on x (from the initial state hx when given), checked
    against ref first."""
    import onnxruntime as ort

    model = onnx_gru_model(ref, x.shape[0], x.shape[1], with_h0=hx is not None)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    # Idle ORT threads must not spin and steal the cores from the other implementations.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = {"X": x.numpy()}
    if hx is not None:
        feed["H0"] = hx.numpy()
    out, h_n = session.run(None, feed)
    _check_against(ref, x, hx, out, h_n, "ONNX Runtime")

    def run():
        session.run(None, feed)
    return run


def _check_against(ref: nn.GRU, x: torch.Tensor, hx: Optional[torch.Tensor], out, h_n,
                   who: str) -> None:
    """Raises unless (out, h_n) (numpy arrays) are nn.GRU's within float32 rounding."""
    with torch.no_grad():
        ref_out, ref_h = ref(x) if hx is None else ref(x, hx)
    err = max((torch.from_numpy(out) - ref_out).abs().max().item(),
              (torch.from_numpy(h_n) - ref_h).abs().max().item())
    if not err < 1e-4:
        raise RuntimeError(f"{who}'s GRU disagrees with nn.GRU: max |diff| {err:.2e}")


def openvino_runner(ref: nn.GRU, x: torch.Tensor, hx: Optional[torch.Tensor] = None,
                    precision: Optional[str] = "f32") -> Runner:
    """OpenVINO running ref on x (the ONNX graph of onnx_gru_model, read by OpenVINO and compiled
    for the CPU on torch's thread count, one stream; precision: its INFERENCE_PRECISION_HINT, or
    None for its default, bf16 on CPUs that have it), checked against ref first (at f32)."""
    import os
    import tempfile

    import openvino as ov

    model = onnx_gru_model(ref, x.shape[0], x.shape[1], with_h0=hx is not None)
    core = ov.Core()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "gru.onnx")
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
        ov_model = core.read_model(path)
    config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(), "NUM_STREAMS": 1,
              "PERFORMANCE_HINT": "LATENCY"}
    if precision is not None:
        config["INFERENCE_PRECISION_HINT"] = precision
    compiled = core.compile_model(ov_model, "CPU", config)
    request = compiled.create_infer_request()
    feed = {"X": x.numpy()}
    if hx is not None:
        feed["H0"] = hx.numpy()
    result = request.infer(feed)
    if precision == "f32":
        _check_against(ref, x, hx, result[compiled.output("output")],
                       result[compiled.output("h_n")], "OpenVINO")

    def run():
        request.infer(feed)
    return run


PEERS = [
    Peer(ORT, requires=("onnx", "onnxruntime"), install="pip install onnx onnxruntime",
         applies=lambda mode, device, dtype: (mode == "inference" and device == "cpu"
                                              and dtype == torch.float32),
         build=onnxruntime_runner),
    Peer(OPENVINO, requires=("onnx", "openvino"), install="pip install onnx openvino",
         applies=lambda mode, device, dtype: (mode == "inference" and device == "cpu"
                                              and dtype == torch.float32),
         build=openvino_runner),
]
