// One decode step of attention for one new position per row (headcount::decode_attention), the
// work of headcount.nn.Attention._step between the fused projection and o_proj in one call:
// RoPE (rotate-half) on the new query and key heads, the key and value written into the cache
// slot, then y = softmax(q k^T * scale) v over the first `held` slots, each KV head serving its
// group's query heads (GQA/MQA: K and V are read once per group, never copied per query head).
// In torch ops that is ~13 dispatches a layer (views, a split, RoPE's product, two cache copies,
// scaled_dot_product_attention and its buffers); here it is one, and the kernel is sized for
// one query row per head instead of a tiled prefill kernel.
//
// Rounding: RoPE as headcount.nn.RoPE.rotate rounds it (x * cos and swap(x) * signed_sin each
// rounded to the storage type, then their sum); scores, softmax and the weighted sum in float32
// (as torch's CPU attention computes bfloat16); the output rounded once to the storage type.
#include <math.h>

#include <algorithm>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace hc {
namespace {

// x (D) rotated into out (D floats, each representable in T); cos/ss null: copied
template <class T>
void rope(const T *x, const T *cos, const T *ss, int64_t D, float *out) {
    if (!cos) {
        for (int64_t i = 0; i < D; i++) out[i] = to_f(x[i]);
        return;
    }
    const int64_t h = D / 2;
    for (int64_t i = 0; i < D; i++) {
        const float a = rnd(to_f(x[i]) * to_f(cos[i]), T());
        const float b = rnd(to_f(x[i < h ? i + h : i - h]) * to_f(ss[i]), T());
        out[i] = rnd(a + b, T());
    }
}

static inline float dot(const float *q, const float *k, int64_t D) {
    int64_t i = 0;
    V acc = vzero();
    for (; i + 16 <= D; i += 16) acc = vfma(vload(q + i), vload(k + i), acc);
    float s = vsum(acc);
    for (; i < D; i++) s += q[i] * k[i];
    return s;
}
static inline float dot(const float *q, const uint16_t *k, int64_t D) {
    int64_t i = 0;
    V acc = vzero();
    for (; i + 16 <= D; i += 16) acc = vfma(vload(q + i), vload_bf16(k + i), acc);
    float s = vsum(acc);
    for (; i < D; i++) s += q[i] * bf16(k[i]);
    return s;
}

// acc (D) += p * v (D)
template <class T>
static inline void axpy(float p, const T *v, int64_t D, float *acc) {
    int64_t i = 0;
    const V pv = vset(p);
    for (; i + 16 <= D; i += 16) vstore(acc + i, vfma(pv, vload_t(v + i), vload(acc + i)));
    for (; i < D; i++) acc[i] += p * to_f(v[i]);
}

template <class T>
void step(const AttnStep &a, const T *qkv, const T *cos, const T *ss, T *kc, T *vc, T *y,
          int64_t u0, int64_t u1) {
    const int64_t D = a.D, S = a.held;
    std::vector<float> buf;
    for (int64_t u = u0; u < u1; u++) {
        const int64_t b = u / a.G, g = u % a.G;
        const int64_t h0 = a.group_off[g], R = a.group_off[g + 1] - h0;
        buf.resize((size_t)(R * D * 2 + R * S + D));
        float *q = buf.data(), *acc = q + R * D, *p = acc + R * D, *kr = p + R * S;
        const T *row = qkv + b * a.qkv_b;
        // the new key: rotated, written into its slot (rounded to T like the cache copy)
        T *kslot = kc + b * a.c_b + g * a.c_g + a.slot * a.c_s;
        T *vslot = vc + b * a.c_b + g * a.c_g + a.slot * a.c_s;
        rope(row + (a.H + g) * a.qkv_h, cos, ss, D, kr);
        for (int64_t i = 0; i < D; i++) put(&kslot[i], kr[i]);
        const T *vnew = row + (a.H + a.G + g) * a.qkv_h;
        for (int64_t i = 0; i < D; i++) vslot[i] = vnew[i];
        for (int64_t r = 0; r < R; r++) rope(row + (h0 + r) * a.qkv_h, cos, ss, D, q + r * D);
        // scores, one pass over the keys (each key row read once for the R query heads)
        const T *kg = kc + b * a.c_b + g * a.c_g, *vg = vc + b * a.c_b + g * a.c_g;
        for (int64_t s = 0; s < S; s++) {
            const T *ks = kg + s * a.c_s;
            for (int64_t r = 0; r < R; r++) p[r * S + s] = dot(q + r * D, ks, D) * a.scale;
        }
        for (int64_t r = 0; r < R; r++) {  // softmax over the held keys
            float *pr = p + r * S, m = pr[0], sum = 0.0f;
            for (int64_t s = 1; s < S; s++) m = std::max(m, pr[s]);
            int64_t s = 0;
            V vs = vzero();
            for (; s + 16 <= S; s += 16) {  // exp in vectors (vexp: within 2 ulp)
                const V e = vexp(vsub(vload(pr + s), vset(m)));
                vstore(pr + s, e);
                vs = vadd(vs, e);
            }
            sum = vsum(vs);
            for (; s < S; s++) sum += (pr[s] = expf(pr[s] - m));
            const float inv = 1.0f / sum;
            for (int64_t s = 0; s < S; s++) pr[s] *= inv;
        }
        std::fill(acc, acc + R * D, 0.0f);
        for (int64_t s = 0; s < S; s++) {  // one pass over the values
            const T *vs = vg + s * a.c_s;
            for (int64_t r = 0; r < R; r++) axpy(p[r * S + s], vs, D, acc + r * D);
        }
        for (int64_t r = 0; r < R; r++) {
            T *yr = y + b * a.H * D + (h0 + r) * D;
            for (int64_t i = 0; i < D; i++) put(&yr[i], acc[r * D + i]);
        }
    }
}

}  // namespace

void decode_attention_f32(const AttnStep &a, const float *qkv, const float *cos, const float *ss,
                          float *kc, float *vc, float *y, int64_t u0, int64_t u1) {
    step<float>(a, qkv, cos, ss, kc, vc, y, u0, u1);
}
void decode_attention_bf16(const AttnStep &a, const uint16_t *qkv, const uint16_t *cos,
                           const uint16_t *ss, uint16_t *kc, uint16_t *vc, uint16_t *y, int64_t u0,
                           int64_t u1) {
    step<uint16_t>(a, qkv, cos, ss, kc, vc, y, u0, u1);
}

}  // namespace hc
