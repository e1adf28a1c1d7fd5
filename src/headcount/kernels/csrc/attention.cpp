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

// p[s] = (q . k_s) * scale for the S keys at kg + s * c_s
template <class T>
void scores(const float *q, const T *kg, int64_t c_s, int64_t S, int64_t D, float scale,
            float *p) {
    int64_t s = 0;
    if (D % 16 == 0)  // 16 keys at a time: 16 dot products' partial sums, one transpose-and-add
        for (; s + 16 <= S; s += 16) {
            V part[16];
            for (int j = 0; j < 16; j++) {
                const T *ks = kg + (s + j) * c_s;
                V acc = vmul(vload(q), vload_t(ks));
                for (int64_t i = 16; i < D; i += 16) acc = vfma(vload(q + i), vload_t(ks + i), acc);
                part[j] = acc;
            }
            vstore(p + s, vmul(vsum16(part), vset(scale)));
        }
    for (; s < S; s++) p[s] = dot(q, kg + s * c_s, D) * scale;
}

// acc (RN, 64) = sum_s p[r * S + s] * v_s[d0 .. d0 + 63]: 4 x RN vector accumulators in
// registers, each value row read once
template <int RN, class T>
void weighted_cols(const float *p, int64_t S, const T *vg, int64_t c_s, int64_t d0, float *acc,
                   int64_t D) {
    V a[RN][4];
    for (int r = 0; r < RN; r++)
        for (int c = 0; c < 4; c++) a[r][c] = vzero();
    for (int64_t s = 0; s < S; s++) {
        const T *vs = vg + s * c_s + d0;
        const V v0 = vload_t(vs), v1 = vload_t(vs + 16);
        const V v2 = vload_t(vs + 32), v3 = vload_t(vs + 48);
        for (int r = 0; r < RN; r++) {
            const V pv = vset(p[r * S + s]);
            a[r][0] = vfma(pv, v0, a[r][0]);
            a[r][1] = vfma(pv, v1, a[r][1]);
            a[r][2] = vfma(pv, v2, a[r][2]);
            a[r][3] = vfma(pv, v3, a[r][3]);
        }
    }
    for (int r = 0; r < RN; r++)
        for (int c = 0; c < 4; c++) vstore(acc + r * D + d0 + 16 * c, a[r][c]);
}

// acc (R, D) = p (R, S) @ v (S, D), v's rows at vg + s * c_s
template <class T>
void weighted_sum(const float *p, int64_t S, const T *vg, int64_t c_s, int64_t R, int64_t D,
                  float *acc) {
    int64_t d0 = 0;
    for (; d0 + 64 <= D; d0 += 64)
        for (int64_t r0 = 0; r0 < R; r0 += 4) {
            const float *pr = p + r0 * S;
            float *ar = acc + r0 * D;
            switch (std::min<int64_t>(4, R - r0)) {
                case 1: weighted_cols<1>(pr, S, vg, c_s, d0, ar, D); break;
                case 2: weighted_cols<2>(pr, S, vg, c_s, d0, ar, D); break;
                case 3: weighted_cols<3>(pr, S, vg, c_s, d0, ar, D); break;
                default: weighted_cols<4>(pr, S, vg, c_s, d0, ar, D); break;
            }
        }
    if (d0 == D) return;
    for (int64_t r = 0; r < R; r++) std::fill(acc + r * D + d0, acc + (r + 1) * D, 0.0f);
    for (int64_t s = 0; s < S; s++) {  // the last D % 64 columns
        const T *vs = vg + s * c_s + d0;
        for (int64_t r = 0; r < R; r++) axpy(p[r * S + s], vs, D - d0, acc + r * D + d0);
    }
}

template <class T>
void step(const AttnStep &a, const T *qkv, const T *cos, const T *ss, T *kc, T *vc, T *y,
          int64_t u0, int64_t u1) {
    const int64_t D = a.D, S = a.held;
    std::vector<float> buf;
    for (int64_t u = u0; u < u1; u++) {
        const int64_t b = u / a.G, g = u % a.G;
        const int64_t h0 = a.group_off[g], R = a.group_off[g + 1] - h0;
        buf.resize((size_t)(R * D * 2 + R * S + D + R));
        float *q = buf.data(), *acc = q + R * D, *p = acc + R * D, *kr = p + R * S;
        float *inv = kr + D;  // 1 / the softmax denominators
        const T *row = qkv + b * a.qkv_b;
        // the new key: rotated, written into its slot (rounded to T like the cache copy)
        T *kslot = kc + b * a.c_b + g * a.c_g + a.slot * a.c_s;
        T *vslot = vc + b * a.c_b + g * a.c_g + a.slot * a.c_s;
        rope(row + (a.H + g) * a.qkv_h, cos, ss, D, kr);
        for (int64_t i = 0; i < D; i++) put(&kslot[i], kr[i]);
        const T *vnew = row + (a.H + a.G + g) * a.qkv_h;
        for (int64_t i = 0; i < D; i++) vslot[i] = vnew[i];
        for (int64_t r = 0; r < R; r++) rope(row + (h0 + r) * a.qkv_h, cos, ss, D, q + r * D);
        const T *kg = kc + b * a.c_b + g * a.c_g, *vg = vc + b * a.c_b + g * a.c_g;
        // the group's key rows, read by each of its R query heads in turn (16 keys at a time,
        // from the first-level cache after the first head)
        for (int64_t r = 0; r < R; r++) scores(q + r * D, kg, a.c_s, S, D, a.scale, p + r * S);
        for (int64_t r = 0; r < R; r++) {  // exp(p - max): the weights before normalisation
            float *pr = p + r * S;
            int64_t s = 0;
            V vm = vset(pr[0]);
            for (; s + 16 <= S; s += 16) vm = vmax(vm, vload(pr + s));
            float m = vhmax(vm);
            for (; s < S; s++) m = std::max(m, pr[s]);
            s = 0;
            V vs = vzero();
            for (; s + 16 <= S; s += 16) {  // exp in vectors (vexp: within 2 ulp)
                const V e = vexp(vsub(vload(pr + s), vset(m)));
                vstore(pr + s, e);
                vs = vadd(vs, e);
            }
            float sum = vsum(vs);
            for (; s < S; s++) sum += (pr[s] = expf(pr[s] - m));
            inv[r] = 1.0f / sum;
        }
        weighted_sum(p, S, vg, a.c_s, R, D, acc);  // one pass over the value rows
        for (int64_t r = 0; r < R; r++) {
            T *yr = y + b * a.H * D + (h0 + r) * D;
            for (int64_t i = 0; i < D; i++) put(&yr[i], acc[r * D + i] * inv[r]);
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
