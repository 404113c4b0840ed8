// quantized.h: the quantized GRU op's CPU implementation (gru_native::quantized_gru, inference
// only): the whole stack forward with int8 or bfloat16 weights and float32 activations.
// Shape legend: gru_cell.h.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>

namespace gru_native::cpu {

// quantized_gru(input, hx, weights, scales, batch_sizes, has_biases, num_layers, bidirectional)
//   -> (output, h_n)
//   input    float32, [T, N, C] (dense) or [R, C] with batch_sizes [T] (packed)
//   hx       float32 [L*D, N, H], or None for zeros
//   weights  nn.GRU's _flat_weights order: per (layer, direction) w_ih [3H, C_l], w_hh [3H, H]
//            (both int8, or both bfloat16, in every layer), then b_ih, b_hh float32 [3H] when
//            has_biases
//   scales   int8 weights: per (layer, direction) s_ih, s_hh float32 [3H], the per-output-channel
//            scales (W = w * s[:, None]); bfloat16 weights: empty
//   panels   None (or empty), or for int8 weights the same matrices again in the panel layout of
//            cpu/qdot.h (per (layer, direction) w_ih, w_hh: int8 [3 * ceil(H / 8) * 8 *
//            ceil(C_l / 16) * 16] and likewise for H), which the products then read instead:
//            the same bits, read as one stream per 8 rows
// The equations are nn.GRU's (linear before reset), in float32 but for the products with the
// weights (int8: qdot.h; bfloat16: converted to float as read).
std::tuple<at::Tensor, at::Tensor> quantized_gru(const at::Tensor& input,
                                                 const std::optional<at::Tensor>& hx,
                                                 at::TensorList weights, at::TensorList scales,
                                                 const std::optional<at::Tensor>& batch_sizes,
                                                 bool has_biases, int64_t num_layers,
                                                 bool bidirectional,
                                                 std::optional<at::TensorList> panels);

// An int8 GRU weight [3H, K] in the panel layout of cpu/qdot.h (1-D, int8_panels_size(3, H, K)
// bytes): what `panels` above holds, made here so that the layout has one definition.
at::Tensor int8_panels(const at::Tensor& weight);

// The direct entries of gru_native.QuantizedGRUCell's and QuantizedGRU's plain eager calls
// (gru_native/quantized.py): the modules' own checks, then quantized_gru on the Python path's
// tensors, the same result; None where a check would fail or anything else applies (a gradient
// wanted, another dtype or device, rank or size; for the GRU a packed or unbatched input), for
// the Python path to raise or handle. The cell: input [N, C] or [C], hx of the same rank or
// none (zeros) -> h' [N, H] or [H]. The GRU: input [T, N, C] ([N, T, C] batch_first), T > 0,
// hx [L*D, N, H] or none -> (output, h_n) as QuantizedGRU.forward returns them.
std::optional<at::Tensor> quantized_cell_direct(const at::Tensor& input,
                                                const std::optional<at::Tensor>& hx,
                                                at::TensorList weights, at::TensorList scales,
                                                at::TensorList panels, bool has_biases,
                                                int64_t input_size, int64_t hidden_size);
std::optional<std::tuple<at::Tensor, at::Tensor>> quantized_gru_direct(
    const at::Tensor& input, const std::optional<at::Tensor>& hx, at::TensorList weights,
    at::TensorList scales, at::TensorList panels, bool has_biases, int64_t num_layers,
    bool bidirectional, bool batch_first, int64_t input_size, int64_t hidden_size);

// Which instructions each low-precision path runs on in this build, for build_info():
// {"bfloat16": ..., "float16": ..., "int8": ...}.
std::tuple<std::string, std::string, std::string> lowp_paths();

}  // namespace gru_native::cpu
