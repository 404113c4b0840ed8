// gru_stack.h: the driver, the device-independent part of the fused ops. One forward runs every
// layer and direction of the stack (input GEMMs, the recurrence kernels, dropout between layers);
// one backward runs them in reverse (recurrence kernels, then one GEMM each for dW_ih, dW_hh and
// d(input), bias gradients as deterministic column sums). Shape legend: gru_cell.h.
//
// The driver is a template over a Backend, which supplies, as static members:
//   kName                                "CPU", "CUDA": for error messages
//   kDtypes                              the dtypes it takes, as text, for error messages
//   supports(at::ScalarType)             the dtypes its kernels take
//   Guard                                a device guard constructed from the input tensor;
//                                        finish() once the results are handed back
//   dispatch(at::ScalarType, f)          calls f(static_cast<T*>(nullptr)) for the element type
//   forward_layer<T>(LayerForwardParams<T>)
//   backward_layer<T>(LayerBackwardParams<T>)
//   gemm<T>(M, N, K, A, B, beta, C, ldc, bias)   C = A B + beta C (+ bias on every row)
//   column_sum<T>(rows, cols, src, ld, dst)      in a fixed order (bitwise reproducible)
//   multiply<T>(n, a, b, out)                    out = a * b elementwise
//   empty(sizes, options)                        an internal tensor (workspace, scratch)
//   empty_result(sizes, options)                 a tensor returned to the caller (outputs,
//                                                h_n, gradients): an ordinary tensor
//   workspace_dtype(dtype)                       the saved gates' dtype for this input dtype
//   Workspace<T>::type                           its C++ type
// and does all its work on the current device and stream of the tensors it is given; optionally
//   synchronize()                        waits for the backend's queued work (phases.h: the
//                                        phases are timed for backends that have it)
// The backend's entry points (Entries<Backend>) and their registration are in backend.h.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "gru_cell.h"
#include "gru_params.h"
#include "phases.h"

namespace gru_native {

// Everything the ops derive from their arguments, validated once (gru_stack.cpp).
struct Geometry {
  int64_t L = 0, D = 1, H = 0, C = 0, P = 0;
  bool packed = false;
  std::vector<int64_t> batch_sizes, offsets;
  StepSchedule steps;

  int64_t index(int64_t layer, int64_t dir, int64_t kind) const {
    return (layer * D + dir) * P + kind;
  }
  int64_t layer_input_size(int64_t layer) const { return layer == 0 ? C : D * H; }
};

struct BackendInfo {
  const char* name;
  const char* dtypes;
  bool dtype_supported;  // the input's dtype
};

// Checks every argument of both ops and builds the step schedule. The checks nn.GRU makes below
// its Python layer come first, with its messages; then the ops' own (names in the messages are
// the op's argument names and nn.GRU's parameter names).
Geometry make_geometry(const BackendInfo& backend, const at::Tensor& input,
                       const std::optional<at::Tensor>& hx, at::TensorList weights,
                       const std::optional<at::Tensor>& batch_sizes,
                       const std::optional<at::Tensor>& dropout_mask, bool has_biases,
                       int64_t num_layers, bool bidirectional);

// nn.GRU's name for _flat_weights[index] (per_dir: 4 with biases, else 2), e.g.
// "bias_hh_l1_reverse".
std::string param_name(int64_t index, int64_t per_dir, int64_t D);

// The input's layout and step schedule into g (packed, C, batch_sizes, offsets, steps), checked:
// dense [T, N, C], or packed [R, C] with batch_sizes [T] (int64, CPU, positive, non-increasing,
// summing to R). Part of make_geometry; also used by the quantized op (cpu/quantized.cpp).
void make_schedule(Geometry& g, const at::Tensor& input,
                   const std::optional<at::Tensor>& batch_sizes);

// Whether `weights` are what the fused kernels take: nn.GRU's _flat_weights for these flags and
// input, every one defined, of nn.GRU's shape and of the input's dtype. make_geometry raises
// when they are not; the direct entries (autograd.cpp) hand such weights to torch's own GRU
// instead, which computes whatever nn.GRU computes with them, or raises nn.GRU's error.
bool weights_fit(const at::Tensor& input, at::TensorList weights, bool has_biases,
                 int64_t num_layers, bool bidirectional);

void check_backward_args(const Geometry& g, const at::Tensor& input, const at::Tensor& output,
                         const at::Tensor& workspace, const at::Tensor& layer_outputs,
                         at::ScalarType workspace_dtype);

template <typename T>
inline T* ptr(const at::Tensor& t) {
  return t.defined() ? static_cast<T*>(t.data_ptr()) : nullptr;
}

template <typename Backend>
struct Stack {
  static BackendInfo info(const at::Tensor& input) {
    return {Backend::kName, Backend::kDtypes, Backend::supports(input.scalar_type())};
  }

  // gru_forward(input, hx, weights, batch_sizes, dropout_mask, has_biases, num_layers,
  //             bidirectional, need_workspace) -> (output, h_n, workspace, layer_outputs)
  //   input         [T, N, C] (dense) or [R, C] with batch_sizes [T] (packed, int64, CPU)
  //   hx            [L*D, N, H], or None for zeros
  //   weights       nn.GRU's _flat_weights: per (layer, direction) w_ih, w_hh[, b_ih, b_hh]
  //   dropout_mask  [L-1, R, D*H] scaled keep-mask (0 or 1/(1-p)) applied to each lower layer's
  //                 output before it feeds the next layer, or None
  //   output        [T, N, D*H] or [R, D*H];  h_n [L*D, N, H]
  //   workspace     [L, D, R, 4H] if need_workspace, else undefined ([0] from the op)
  //   layer_outputs [L-1, R, D*H] the lower layers' outputs before dropout if need_workspace and
  //                 L > 1, else undefined ([0] from the op)
  static std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward(
      const at::Tensor& input, const std::optional<at::Tensor>& hx, at::TensorList weights,
      const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
      bool has_biases, int64_t num_layers, bool bidirectional, bool need_workspace) {
    const Geometry g = make_geometry(info(input), input, hx, weights, batch_sizes, dropout_mask,
                                     has_biases, num_layers, bidirectional);
    const int64_t R = g.steps.R, N = g.steps.N, H = g.H, D = g.D, L = g.L;
    const auto opts = input.options();
    at::Tensor output = g.packed ? Backend::empty_result({R, D * H}, opts)
                                 : Backend::empty_result({g.steps.T, N, D * H}, opts);
    at::Tensor hy = Backend::empty_result({L * D, N, H}, opts);
    // Undefined when not needed (the op returns [0] tensors instead: backend.h).
    at::Tensor workspace =
        need_workspace
            ? Backend::empty({L, D, R, kWorkspaceGates * H},
                             opts.dtype(Backend::workspace_dtype(input.scalar_type())))
            : at::Tensor();
    at::Tensor layer_outputs =
        (need_workspace && L > 1) ? Backend::empty({L - 1, R, D * H}, opts) : at::Tensor();
    // Scratch: the input projections of both directions, and for inference the lower layers'
    // outputs (two buffers in turn); with dropout, the masked input of the next layer.
    const int64_t n_lower = (!need_workspace && L > 1) ? std::min<int64_t>(L - 1, 2) : 0;
    const bool masked = dropout_mask.has_value();
    // The input projections [D, R, 3H]. In training they get a block of the size of the
    // backward's dG, so that the backward reuses it (host cache) instead of holding both.
    const at::Tensor gi_all =
        Backend::empty({D * R * (need_workspace ? kGradGates : kGates) * H}, opts);
    at::Tensor scratch = Backend::empty({(n_lower + (masked ? 1 : 0)) * R * D * H}, opts);
    const at::Tensor x0 = input.contiguous();
    const at::Tensor h0 = hx.has_value() ? hx->contiguous() : at::Tensor();  // none: zeros
    std::vector<at::Tensor> w(weights.size());
    for (size_t i = 0; i < weights.size(); ++i) w[i] = weights[i].contiguous();
    const at::Tensor mask = masked ? dropout_mask->contiguous() : at::Tensor();

    Backend::dispatch(input.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      using W = typename Backend::template Workspace<T>::type;
      T* gi = ptr<T>(gi_all);
      T* lower = ptr<T>(scratch);
      T* xdrop = lower + n_lower * R * D * H;
      const T* x = ptr<T>(x0);
      using Phase = phases::Scope<Backend>;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t Cl = g.layer_input_size(l);
        LayerForwardParams<T, W> p;
        p.steps = g.steps;
        p.H = H;
        p.D = static_cast<int>(D);
        for (int64_t d = 0; d < D; ++d) {
          // gi = x W_ih^T for all steps at once: A = x [R, Cl], B(k=c, n=g) = W_ih[g, c]. The
          // kernels add b_ih on the fly (one pass less over [R, 3H]).
          T* gi_d = gi + d * R * kGates * H;
          {
            const Phase timed(phases::kInputProjection, double(R) * kGates * H * Cl);
            Backend::template gemm<T>(R, kGates * H, Cl, MatRef<T>{x, Cl, 1},
                                      MatRef<T>{ptr<T>(w[g.index(l, d, 0)]), 1, Cl}, T(0), gi_d,
                                      kGates * H, nullptr);
          }
          p.gi[d] = gi_d;
          p.b_ih[d] = has_biases ? ptr<T>(w[g.index(l, d, 2)]) : nullptr;
          p.w_hh[d] = ptr<T>(w[g.index(l, d, 1)]);
          p.b_hh[d] = has_biases ? ptr<T>(w[g.index(l, d, 3)]) : nullptr;
          p.h0[d] = h0.defined() ? ptr<T>(h0) + (l * D + d) * N * H : nullptr;
          p.hy[d] = ptr<T>(hy) + (l * D + d) * N * H;
          p.ws[d] = need_workspace ? ptr<W>(workspace) + ((l * D + d) * R) * kWorkspaceGates * H
                                   : nullptr;
        }
        if (l == L - 1) {
          p.out = ptr<T>(output);
        } else if (need_workspace) {
          p.out = ptr<T>(layer_outputs) + l * R * D * H;
        } else {
          p.out = lower + (l % 2) * R * D * H;
        }
        {
          const Phase timed(phases::kForwardRecurrence, double(D) * R * kGates * H * H);
          Backend::template forward_layer<T>(p);
        }
        if (l < L - 1) {
          x = p.out;
          if (masked) {
            const Phase timed(phases::kDropout, 0);
            Backend::template multiply<T>(R * D * H, p.out, ptr<T>(mask) + l * R * D * H, xdrop);
            x = xdrop;
          }
        }
      }
    });
    return {output, hy, workspace, layer_outputs};
  }

  // gru_backward(...) -> (grad_input, grad_hx, grad_weights); grad_input is [0] unless
  // need_input_grad, grad_hx is [0] unless need_hx_grad, grad_weights is empty unless
  // need_weight_grad. Without need_hx_grad the product of each direction's first step with W_hh,
  // which only gives dL/dh0, is skipped (at T=1: the whole recurrent product). grad_output /
  // grad_hy may be None (that output was not used).
  static std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> backward(
      const std::optional<at::Tensor>& grad_output, const std::optional<at::Tensor>& grad_hy,
      const at::Tensor& input, const std::optional<at::Tensor>& hx, at::TensorList weights,
      const std::optional<at::Tensor>& batch_sizes, const std::optional<at::Tensor>& dropout_mask,
      const at::Tensor& output, const at::Tensor& workspace, const at::Tensor& layer_outputs,
      bool has_biases, int64_t num_layers, bool bidirectional, bool need_input_grad,
      bool need_weight_grad, bool need_hx_grad) {
    const Geometry g = make_geometry(info(input), input, hx, weights, batch_sizes, dropout_mask,
                                     has_biases, num_layers, bidirectional);
    check_backward_args(g, input, output, workspace, layer_outputs,
                        Backend::workspace_dtype(input.scalar_type()));
    const int64_t R = g.steps.R, N = g.steps.N, H = g.H, D = g.D, L = g.L, G = kGates * H;
    const auto opts = input.options();
    const bool has_gout = grad_output.has_value() && grad_output->defined();
    const at::Tensor dout_top = has_gout ? grad_output->contiguous() : at::zeros({R, D * H}, opts);
    // dL/dh of every layer and direction while the steps run back; dL/dh0 at the end.
    at::Tensor grad_hx = need_hx_grad ? Backend::empty_result({L * D, N, H}, opts)
                                      : Backend::empty({L * D, N, H}, opts);
    if (grad_hy.has_value() && grad_hy->defined()) {
      grad_hx.copy_(*grad_hy);
    } else {
      grad_hx.zero_();
    }
    const at::Tensor x0 = input.contiguous();
    const at::Tensor h0 = hx.has_value() ? hx->contiguous() : at::Tensor();  // none: zeros
    const at::Tensor out_c = output.contiguous();
    const at::Tensor ws_c = workspace.contiguous();
    const at::Tensor lower_c = layer_outputs.contiguous();
    const bool masked = dropout_mask.has_value();
    const at::Tensor mask = masked ? dropout_mask->contiguous() : at::Tensor();
    std::vector<at::Tensor> w(weights.size());
    for (size_t i = 0; i < weights.size(); ++i) w[i] = weights[i].contiguous();
    std::vector<at::Tensor> grad_weights(need_weight_grad ? weights.size() : 0);
    for (size_t i = 0; i < grad_weights.size(); ++i) {
      grad_weights[i] = Backend::empty_result(w[i].sizes(), w[i].options());
    }
    at::Tensor grad_input =
        need_input_grad ? Backend::empty_result(input.sizes(), opts) : at::empty({0}, opts);
    // Scratch, one block each (so that the host cache can hand the forward's blocks back):
    // dG of both directions (the same size as the forward's scratch), h_{t-1}, and the gradient
    // of the lower layer's output with (under dropout) the layer's recomputed masked input.
    const int64_t lower_rows = L > 1 ? R * D * H : 0;
    const at::Tensor dg_all = Backend::empty({D * R * kGradGates * H}, opts);
    const at::Tensor hp_all = Backend::empty({D * R * H}, opts);
    const at::Tensor lower_all =
        Backend::empty({lower_rows + (masked ? lower_rows : 0)}, opts);

    Backend::dispatch(input.scalar_type(), [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      using W = typename Backend::template Workspace<T>::type;
      T* dg = ptr<T>(dg_all);
      T* hp = ptr<T>(hp_all);
      T* dlower = ptr<T>(lower_all);
      T* xdrop = dlower + lower_rows;
      const T* dout = ptr<T>(dout_top);
      const int64_t ldg = kGradGates * H;
      using Phase = phases::Scope<Backend>;
      for (int64_t l = L - 1; l >= 0; --l) {
        const int64_t Cl = g.layer_input_size(l);
        LayerBackwardParams<T, W> p;
        p.steps = g.steps;
        p.H = H;
        p.D = static_cast<int>(D);
        p.need_dh0 = need_hx_grad;
        p.out = l == L - 1 ? ptr<T>(out_c) : ptr<T>(lower_c) + l * R * D * H;
        p.dout = dout;
        for (int64_t d = 0; d < D; ++d) {
          p.w_hh[d] = ptr<T>(w[g.index(l, d, 1)]);
          p.h0[d] = h0.defined() ? ptr<T>(h0) + (l * D + d) * N * H : nullptr;
          p.ws[d] = ptr<W>(ws_c) + ((l * D + d) * R) * kWorkspaceGates * H;
          p.dh[d] = ptr<T>(grad_hx) + (l * D + d) * N * H;
          p.dg[d] = dg + d * R * ldg;
          p.hp[d] = hp + d * R * H;
        }
        {
          // (Without dL/dh0 the first step's product is skipped.)
          const double rows = need_hx_grad ? R : R - N;
          const Phase timed(phases::kBackwardRecurrence, double(D) * rows * kGates * H * H);
          Backend::template backward_layer<T>(p);
        }

        const bool need_dx = l > 0 || need_input_grad;
        if (!need_weight_grad && !need_dx) continue;
        // The layer's input: x, or the lower layer's output (times its dropout mask).
        const T* x = ptr<T>(x0);
        if (l > 0) {
          x = ptr<T>(lower_c) + (l - 1) * R * D * H;
          if (masked) {
            const Phase timed(phases::kDropout, 0);
            Backend::template multiply<T>(R * D * H, x, ptr<T>(mask) + (l - 1) * R * D * H,
                                          xdrop);
            x = xdrop;
          }
        }
        T* dx = l > 0 ? dlower : ptr<T>(grad_input);
        for (int64_t d = 0; d < D; ++d) {
          // dG's blocks: [d_r | d_z] (both GEMMs' r and z gates), then d_hn (W_hh's n gate),
          // then d_n (W_ih's n gate). A(m=g, k=r) = dG[r, g] for the weight gradients.
          const T* dg_rz = p.dg[d];
          const T* dg_in = p.dg[d] + 3 * H;
          const T* w_ih = ptr<T>(w[g.index(l, d, 0)]);
          if (need_weight_grad) {
            T* dw_ih = ptr<T>(grad_weights[g.index(l, d, 0)]);
            {
              // dW_hh = dG_h^T h_{t-1} (dG_h = the first three blocks, contiguous).
              const Phase timed(phases::kWeightGradHH, double(G) * H * R);
              Backend::template gemm<T>(G, H, R, MatRef<T>{dg_rz, 1, ldg},
                                        MatRef<T>{p.hp[d], H, 1}, T(0),
                                        ptr<T>(grad_weights[g.index(l, d, 1)]), H, nullptr);
            }
            {
              // dW_ih = dG_i^T x: rows r, z from [d_r | d_z], rows n from d_n.
              const Phase timed(phases::kWeightGradIH, double(G) * Cl * R);
              Backend::template gemm<T>(2 * H, Cl, R, MatRef<T>{dg_rz, 1, ldg},
                                        MatRef<T>{x, Cl, 1}, T(0), dw_ih, Cl, nullptr);
              Backend::template gemm<T>(H, Cl, R, MatRef<T>{dg_in, 1, ldg},
                                        MatRef<T>{x, Cl, 1}, T(0), dw_ih + 2 * H * Cl, Cl,
                                        nullptr);
            }
            if (has_biases) {
              const Phase timed(phases::kBiasGrad, 0);
              T* db_ih = ptr<T>(grad_weights[g.index(l, d, 2)]);
              Backend::template column_sum<T>(R, 2 * H, dg_rz, ldg, db_ih);
              Backend::template column_sum<T>(R, H, dg_in, ldg, db_ih + 2 * H);
              Backend::template column_sum<T>(R, G, dg_rz, ldg,
                                              ptr<T>(grad_weights[g.index(l, d, 3)]));
            }
          }
          if (need_dx) {
            const Phase timed(phases::kInputGrad, double(R) * Cl * G);
            // d(input) = sum over directions of dG_i W_ih.
            Backend::template gemm<T>(R, Cl, 2 * H, MatRef<T>{dg_rz, ldg, 1},
                                      MatRef<T>{w_ih, Cl, 1}, d == 0 ? T(0) : T(1), dx, Cl,
                                      nullptr);
            Backend::template gemm<T>(R, Cl, H, MatRef<T>{dg_in, ldg, 1},
                                      MatRef<T>{w_ih + 2 * H * Cl, Cl, 1}, T(1), dx, Cl,
                                      nullptr);
          }
        }
        if (l > 0) {
          if (masked) {
            const Phase timed(phases::kDropout, 0);
            Backend::template multiply<T>(R * D * H, dx, ptr<T>(mask) + (l - 1) * R * D * H,
                                          dx);
          }
          dout = dx;
        }
      }
    });
    if (!need_hx_grad) grad_hx = at::empty({0}, opts);
    return {grad_input, grad_hx, grad_weights};
  }
};

}  // namespace gru_native
