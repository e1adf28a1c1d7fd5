// The headcount kernels as torch operators (torch.ops.headcount.*): argument checks, the
// output tensors and the split of output rows across torch's threads. CPU and Meta (shape
// only, for torch.compile's fake tensors) implementations; no autograd (inference only).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <optional>

#include "kernels.h"

namespace {

using at::Tensor;

// rows per thread task: at least ~64K weights, so small matrices stay on one thread
int64_t grain(int64_t K) { return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(K, 1)); }

void check_input(const Tensor &x, int64_t K) {
    TORCH_CHECK(x.device().is_cpu(), "headcount kernels: input must be on the CPU");
    TORCH_CHECK(x.dim() == 2 && x.size(1) == K, "headcount kernels: input must be (M, ", K,
                "), got ", x.sizes());
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
                "headcount kernels: input must be float32 or bfloat16, got ", x.scalar_type());
}

Tensor gemv(const Tensor &x, const Tensor &w, const std::optional<Tensor> &scale) {
    TORCH_CHECK(w.device().is_cpu() && w.dim() == 2 && w.is_contiguous(),
                "gemv: the weight must be a contiguous (N, K) CPU tensor, got ", w.sizes());
    const int64_t N = w.size(0), K = w.size(1);
    check_input(x, K);
    const int64_t M = x.size(0);
    Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
    float *yp = y.data_ptr<float>();
    const auto wt = w.scalar_type();
    if (wt == at::kBFloat16 && x.scalar_type() == at::kBFloat16) {
        Tensor xc = x.contiguous();
        const auto *xp = reinterpret_cast<const uint16_t *>(xc.data_ptr());
        const auto *wp = reinterpret_cast<const uint16_t *>(w.data_ptr());
        bool done = true;
        at::parallel_for(0, N, grain(K), [&](int64_t n0, int64_t n1) {
            if (!hc::gemv_bf16_bf16(xp, M, K, wp, yp, N, n0, n1)) done = false;
        });
        if (done) return y;
    }
    Tensor xf = x.to(at::kFloat).contiguous();
    const float *xp = xf.data_ptr<float>();
    if (wt == at::kFloat) {
        const float *wp = w.data_ptr<float>();
        at::parallel_for(0, N, grain(K), [&](int64_t n0, int64_t n1) {
            hc::gemv_f32(xp, M, K, wp, yp, N, n0, n1);
        });
    } else if (wt == at::kBFloat16) {
        const auto *wp = reinterpret_cast<const uint16_t *>(w.data_ptr());
        at::parallel_for(0, N, grain(K), [&](int64_t n0, int64_t n1) {
            hc::gemv_bf16(xp, M, K, wp, yp, N, n0, n1);
        });
    } else if (wt == at::kChar) {
        TORCH_CHECK(scale.has_value() && scale->scalar_type() == at::kFloat &&
                        scale->dim() == 1 && scale->size(0) == N && scale->is_contiguous(),
                    "gemv: int8 weights need contiguous float32 scales (", N, ",)");
        const int8_t *wp = w.data_ptr<int8_t>();
        const float *sp = scale->data_ptr<float>();
        at::parallel_for(0, N, grain(K), [&](int64_t n0, int64_t n1) {
            hc::gemv_i8(xp, M, K, wp, sp, yp, N, n0, n1);
        });
    } else {
        TORCH_CHECK(false, "gemv: weights must be float32, bfloat16 or int8, got ", wt);
    }
    return y;
}

void check_packed(const Tensor &w, int64_t qtype, int64_t K) {
    TORCH_CHECK(hc::qtype_known(qtype), "headcount kernels: unknown packed type ", qtype);
    TORCH_CHECK(K > 0 && K % hc::qtype_block(qtype) == 0, "headcount kernels: K=", K,
                " is not a multiple of the ", hc::qtype_block(qtype), "-value block");
    TORCH_CHECK(w.device().is_cpu() && w.scalar_type() == at::kByte && w.dim() == 2 &&
                    w.is_contiguous() && w.size(1) == K / hc::qtype_block(qtype) * hc::qtype_bytes(qtype),
                "headcount kernels: packed rows must be a contiguous uint8 (N, ",
                K / hc::qtype_block(qtype) * hc::qtype_bytes(qtype), ") tensor, got ", w.sizes(),
                " ", w.scalar_type());
}

Tensor gemv_q(const Tensor &x, const Tensor &w, int64_t qtype, int64_t K) {
    check_packed(w, qtype, K);
    check_input(x, K);
    const int64_t M = x.size(0), N = w.size(0);
    Tensor xf = x.to(at::kFloat).contiguous();
    Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
    const float *xp = xf.data_ptr<float>();
    const uint8_t *wp = w.data_ptr<uint8_t>();
    float *yp = y.data_ptr<float>();
    if (qtype == hc::Q4_1X || qtype == hc::Q8_0X) {  // x rounded to int16 once, then the rows
        const void *prepared = hc::x16_prepare(xp, M, K);
        at::parallel_for(0, N, grain(K / 4), [&](int64_t n0, int64_t n1) {
            hc::gemv_x16(qtype, prepared, M, K, wp, yp, N, n0, n1);
        });
        return y;
    }
    at::parallel_for(0, N, grain(K / 4), [&](int64_t n0, int64_t n1) {
        hc::gemv_q(qtype, xp, M, K, wp, yp, N, n0, n1);
    });
    return y;
}

// GGUF Q4_1 / Q8_0 rows -> the same rows regrouped as Q4_1x / Q8_0x (x16.cpp)
Tensor regroup(const Tensor &w, int64_t qtype, int64_t K) {
    TORCH_CHECK(qtype == hc::Q4_1 || qtype == hc::Q8_0, "regroup: Q4_1 or Q8_0 rows, not type ",
                qtype);
    check_packed(w, qtype, K);
    Tensor out = at::empty_like(w);
    const uint8_t *wp = w.data_ptr<uint8_t>();
    uint8_t *op = out.data_ptr<uint8_t>();
    at::parallel_for(0, w.size(0), grain(K), [&](int64_t n0, int64_t n1) {
        if (qtype == hc::Q4_1)
            hc::q4x_from_q4_1(wp, K, op, n0, n1);
        else
            hc::q8x_from_q8_0(wp, K, op, n0, n1);
    });
    return out;
}

// int8 activations: x rounded per 32 values (once, before the row split), then int8 dot products
Tensor gemv_q8a(const Tensor &x, const Tensor &w, int64_t qtype, int64_t K) {
    check_packed(w, qtype, K);
    check_input(x, K);
    TORCH_CHECK(hc::qtype_int8_activations(qtype),
                "gemv_q8a: int8 activations serve Q4_0, Q4_1 and Q8_0, not type ", qtype);
    const int64_t M = x.size(0), N = w.size(0), ng = K / 32;
    Tensor xf = x.to(at::kFloat).contiguous();
    Tensor xq = at::empty({M, K}, x.options().dtype(at::kChar));
    Tensor sc = at::empty({2, M, ng}, x.options().dtype(at::kFloat));
    float *dx = sc.data_ptr<float>(), *xs = dx + M * ng;
    hc::quantize_rows(xf.data_ptr<float>(), M, K, xq.data_ptr<int8_t>(), dx, xs);
    Tensor y = at::empty({M, N}, x.options().dtype(at::kFloat));
    const int8_t *xqp = xq.data_ptr<int8_t>();
    const uint8_t *wp = w.data_ptr<uint8_t>();
    float *yp = y.data_ptr<float>();
    at::parallel_for(0, N, grain(K / 4), [&](int64_t n0, int64_t n1) {
        hc::gemv_q_a8(qtype, xqp, dx, xs, M, K, wp, yp, N, n0, n1);
    });
    return y;
}

void dequant_q(const Tensor &w, int64_t qtype, int64_t K, Tensor out) {
    check_packed(w, qtype, K);
    const int64_t N = w.size(0);
    TORCH_CHECK(out.scalar_type() == at::kFloat && out.is_contiguous() && out.dim() == 2 &&
                    out.size(0) == N && out.size(1) == K,
                "dequant_q: out must be a contiguous float32 (", N, ", ", K, ") tensor");
    const uint8_t *wp = w.data_ptr<uint8_t>();
    float *op = out.data_ptr<float>();
    at::parallel_for(0, N, grain(K), [&](int64_t n0, int64_t n1) {
        hc::dequant_q(qtype, wp, K, op, n0, n1);
    });
}

// RMSNorm over the last dim (norm.cpp): float32 or bfloat16 x, a weight of its dtype or none
Tensor rms_norm(const Tensor &x, const std::optional<Tensor> &weight, double eps) {
    TORCH_CHECK(x.device().is_cpu() && x.dim() >= 1 && x.size(-1) > 0,
                "rms_norm: a CPU tensor (..., C) with C > 0, got ", x.sizes());
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16,
                "rms_norm: float32 or bfloat16 input, got ", x.scalar_type());
    const int64_t C = x.size(-1);
    if (weight.has_value())
        TORCH_CHECK(weight->device().is_cpu() && weight->dim() == 1 && weight->size(0) == C &&
                        weight->scalar_type() == x.scalar_type() && weight->is_contiguous(),
                    "rms_norm: the weight must be a contiguous (", C, ",) tensor of the input's dtype");
    Tensor xc = x.contiguous();
    Tensor y = at::empty_like(xc);
    const int64_t R = xc.numel() / C;
    const float e = (float)eps;
    if (x.scalar_type() == at::kFloat) {
        const float *xp = xc.data_ptr<float>(), *wp = weight ? weight->data_ptr<float>() : nullptr;
        float *yp = y.data_ptr<float>();
        at::parallel_for(0, R, grain(C), [&](int64_t r0, int64_t r1) {
            hc::rms_norm_f32(xp, wp, e, C, yp, r0, r1);
        });
    } else {
        const auto *xp = reinterpret_cast<const uint16_t *>(xc.data_ptr());
        const auto *wp = weight ? reinterpret_cast<const uint16_t *>(weight->data_ptr()) : nullptr;
        auto *yp = reinterpret_cast<uint16_t *>(y.data_ptr());
        at::parallel_for(0, R, grain(C), [&](int64_t r0, int64_t r1) {
            hc::rms_norm_bf16(xp, wp, e, C, yp, r0, r1);
        });
    }
    return y;
}

Tensor gemv_meta(const Tensor &x, const Tensor &w, const std::optional<Tensor> &) {
    return at::empty({x.size(0), w.size(0)}, x.options().dtype(at::kFloat));
}
Tensor gemv_q_meta(const Tensor &x, const Tensor &w, int64_t, int64_t) {
    return at::empty({x.size(0), w.size(0)}, x.options().dtype(at::kFloat));
}
void dequant_q_meta(const Tensor &, int64_t, int64_t, Tensor) {}
Tensor regroup_meta(const Tensor &w, int64_t, int64_t) { return at::empty_like(w); }
Tensor rms_norm_meta(const Tensor &x, const std::optional<Tensor> &, double) {
    return at::empty_like(x, at::MemoryFormat::Contiguous);
}

}  // namespace

TORCH_LIBRARY(headcount, m) {
    m.def("gemv(Tensor x, Tensor w, Tensor? scale=None) -> Tensor");
    m.def("gemv_q(Tensor x, Tensor w, int qtype, int k) -> Tensor");
    m.def("gemv_q8a(Tensor x, Tensor w, int qtype, int k) -> Tensor");
    m.def("dequant_q(Tensor w, int qtype, int k, Tensor(a!) out) -> ()");
    m.def("regroup(Tensor w, int qtype, int k) -> Tensor");
    m.def("rms_norm(Tensor x, Tensor? weight, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(headcount, CPU, m) {
    m.impl("gemv", &gemv);
    m.impl("gemv_q", &gemv_q);
    m.impl("gemv_q8a", &gemv_q8a);
    m.impl("dequant_q", &dequant_q);
    m.impl("regroup", &regroup);
    m.impl("rms_norm", &rms_norm);
}

TORCH_LIBRARY_IMPL(headcount, Meta, m) {
    m.impl("gemv", &gemv_meta);
    m.impl("gemv_q", &gemv_q_meta);
    m.impl("gemv_q8a", &gemv_q_meta);
    m.impl("dequant_q", &dequant_q_meta);
    m.impl("regroup", &regroup_meta);
    m.impl("rms_norm", &rms_norm_meta);
}
