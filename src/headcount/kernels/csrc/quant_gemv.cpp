// Batch-1 matrix-vector products on GGUF blocks that stay packed in memory (Q4_0, Q4_1, Q5_0, Q5_1,
// Q8_0, Q4_K, Q6_K). Each block is decoded in registers, 32 values at a time, to integers
// (exact in float32) and its scales; the GEMV sums d * sum(q * x) + m * sum(x) per 32 values
// in float32 (the dequantised weights' products, summed in another order), and dequant_q
// computes d * q + m exactly as gguf.quants.dequantize does (built with -ffp-contract=off, so
// it is rounded twice as numpy rounds it).
// Block layouts: ggml-common.h (llama.cpp) and gguf-py's quants.py.
#include "kernels.h"
#include "simd.h"

namespace hc {
namespace {

const __m128i LOW4 = _mm_set1_epi8(0x0F);

static inline __m128i nibbles(__m128i q, int shift) {
    return _mm_and_si128(_mm_srl_epi16(q, _mm_cvtsi32_si128(shift)), LOW4);
}

// Each format: QK values and BYTES bytes per block. decode(block, j, D) reads values
// 32j..32j+31 as integers (exact in float32): value = dlo * qlo + bias for the first 16,
// dhi * qhi + bias for the next 16 (SAME: dlo == dhi; BIAS: bias != 0).
struct Decoded {
    V qlo, qhi;
    float dlo, dhi, bias;
};
struct BQ4_0 {  // d (fp16), 16 bytes: value i = d * (nibble - 8), low nibbles first
    static constexpr int QK = 32, BYTES = 18;
    static constexpr bool SAME = true, BIAS = false;
    static void decode(const uint8_t *b, int, Decoded &o) {
        const __m128i q = load16(b + 2), eight = _mm_set1_epi8(8);
        o.qlo = vfrom_s8(_mm_sub_epi8(nibbles(q, 0), eight));
        o.qhi = vfrom_s8(_mm_sub_epi8(nibbles(q, 4), eight));
        o.dlo = o.dhi = fp16(b), o.bias = 0.0f;
    }
};
struct BQ4_1 {  // d, m (fp16), 16 bytes: value i = d * nibble + m
    static constexpr int QK = 32, BYTES = 20;
    static constexpr bool SAME = true, BIAS = true;
    static void decode(const uint8_t *b, int, Decoded &o) {
        const __m128i q = load16(b + 4);
        o.qlo = vfrom_u8(nibbles(q, 0));
        o.qhi = vfrom_u8(nibbles(q, 4));
        o.dlo = o.dhi = fp16(b), o.bias = fp16(b + 2);
    }
};
// 16 bits of a Q5 block's high-bit word -> 16 bytes, 0x10 where the bit is set
static inline __m128i fifth_bits(uint32_t m16) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm_and_si128(_mm_movm_epi8((__mmask16)m16), _mm_set1_epi8(0x10));
#else
    __m128i v = _mm_shuffle_epi8(_mm_set1_epi16((short)m16),
                                 _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
    const __m128i bit = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
    return _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(v, bit), bit), _mm_set1_epi8(0x10));
#endif
}
struct BQ5_0 {  // d (fp16), 32 high bits (uint32), 16 bytes: value i = d * (5-bit q_i - 16)
    static constexpr int QK = 32, BYTES = 22;
    static constexpr bool SAME = true, BIAS = false;
    static void decode(const uint8_t *b, int, Decoded &o) {
        uint32_t qh;
        memcpy(&qh, b + 2, 4);
        const __m128i q = load16(b + 6), sixteen = _mm_set1_epi8(16);
        o.qlo = vfrom_s8(_mm_sub_epi8(_mm_or_si128(nibbles(q, 0), fifth_bits(qh & 0xFFFF)), sixteen));
        o.qhi = vfrom_s8(_mm_sub_epi8(_mm_or_si128(nibbles(q, 4), fifth_bits(qh >> 16)), sixteen));
        o.dlo = o.dhi = fp16(b), o.bias = 0.0f;
    }
};
struct BQ5_1 {  // d, m (fp16), 32 high bits, 16 bytes: value i = d * q_i + m
    static constexpr int QK = 32, BYTES = 24;
    static constexpr bool SAME = true, BIAS = true;
    static void decode(const uint8_t *b, int, Decoded &o) {
        uint32_t qh;
        memcpy(&qh, b + 4, 4);
        const __m128i q = load16(b + 8);
        o.qlo = vfrom_u8(_mm_or_si128(nibbles(q, 0), fifth_bits(qh & 0xFFFF)));
        o.qhi = vfrom_u8(_mm_or_si128(nibbles(q, 4), fifth_bits(qh >> 16)));
        o.dlo = o.dhi = fp16(b), o.bias = fp16(b + 2);
    }
};
struct BQ8_0 {  // d (fp16), 32 int8: value i = d * q_i
    static constexpr int QK = 32, BYTES = 34;
    static constexpr bool SAME = true, BIAS = false;
    static void decode(const uint8_t *b, int, Decoded &o) {
        o.qlo = vfrom_s8(load16(b + 2));
        o.qhi = vfrom_s8(load16(b + 18));
        o.dlo = o.dhi = fp16(b), o.bias = 0.0f;
    }
};
struct BQ4_K {  // d, dmin (fp16), 12 bytes of 6-bit scales/mins for 8 sub-blocks, 128 bytes
    static constexpr int QK = 256, BYTES = 144;
    static constexpr bool SAME = true, BIAS = true;
    static void decode(const uint8_t *b, int j, Decoded &o) {
        const uint8_t *s = b + 4, *qs = b + 16 + 32 * (j / 2);
        int sc, mn;
        if (j < 4) {
            sc = s[j] & 63;
            mn = s[j + 4] & 63;
        } else {
            sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
        const int shift = 4 * (j % 2);  // sub-block 2p: low nibbles of 32 bytes, 2p+1: high
        o.qlo = vfrom_u8(nibbles(load16(qs), shift));
        o.qhi = vfrom_u8(nibbles(load16(qs + 16), shift));
        o.dlo = o.dhi = fp16(b) * (float)sc;
        o.bias = -(fp16(b + 2) * (float)mn);  // d*sc*q - dmin*m, as gguf computes it
    }
};
struct BQ6_K {  // ql (128 bytes, low 4 bits), qh (64, high 2 bits), 16 int8 scales, d (fp16)
    static constexpr int QK = 256, BYTES = 210;
    static constexpr bool SAME = false, BIAS = false;
    static void decode(const uint8_t *b, int j, Decoded &o) {
        const int h = j / 4, t = j % 4;  // half of the block, 32-value group in it
        const uint8_t *ql = b + 64 * h + 32 * (t % 2), *qh = b + 128 + 32 * h;
        const int8_t *sc = (const int8_t *)(b + 192) + 8 * h + 2 * t;
        const float d = fp16(b + 208);
        const __m128i three = _mm_set1_epi8(3), m32 = _mm_set1_epi8(32);
        const __m128i c = _mm_cvtsi32_si128(2 * t);
        __m128i q[2];
        for (int i = 0; i < 2; i++) {
            __m128i low = nibbles(load16(ql + 16 * i), 4 * (t / 2));
            __m128i high = _mm_and_si128(_mm_srl_epi16(load16(qh + 16 * i), c), three);
            q[i] = _mm_sub_epi8(_mm_or_si128(low, _mm_slli_epi16(high, 4)), m32);
        }
        o.qlo = vfrom_s8(q[0]);
        o.qhi = vfrom_s8(q[1]);
        o.dlo = d * (float)sc[0], o.dhi = d * (float)sc[1], o.bias = 0.0f;
    }
};

// sum over 32 values of w * x, into acc (and bias * sum(x) into sacc)
template <class Q>
static inline void dot32(const Decoded &o, const float *xk, float xs, V &acc, float &sacc) {
    const V xlo = vload(xk), xhi = vload(xk + 16);
    if (Q::SAME) {
        acc = vfma(vset(o.dlo), vfma(o.qhi, xhi, vmul(o.qlo, xlo)), acc);
    } else {
        acc = vfma(vset(o.dlo), vmul(o.qlo, xlo), acc);
        acc = vfma(vset(o.dhi), vmul(o.qhi, xhi), acc);
    }
    if (Q::BIAS) sacc += o.bias * xs;
}

// y[m, n] for rows n0..n1: weights read once, M input rows against each decoded block; two
// accumulators per input row (alternate 32-value groups) to overlap the FMA latency
template <class Q, int M>
void gemv_rows(const float *x, int64_t K, const uint8_t *w, float *y, int64_t N, int64_t n0,
               int64_t n1) {
    const int64_t nb = K / Q::QK, row_bytes = nb * Q::BYTES, ng = K / 32;
    float xs[M * 64 + 1];  // sums of x over each 32-value group (only for BIAS formats)
    float *xsum = xs;
    float *heap = nullptr;
    if (Q::BIAS) {
        if (M * ng > M * 64) xsum = heap = new float[M * ng];
        for (int m = 0; m < M; m++)
            for (int64_t g = 0; g < ng; g++) {
                const float *p = x + m * K + 32 * g;
                xsum[m * ng + g] = vsum(vadd(vload(p), vload(p + 16)));
            }
    }
    constexpr int G = Q::QK / 32;  // 32-value groups per block
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wr = w + n * row_bytes;
        V acc0[M], acc1[M];
        float sacc0[M], sacc1[M];
        for (int m = 0; m < M; m++) acc0[m] = acc1[m] = vzero(), sacc0[m] = sacc1[m] = 0.0f;
        auto group = [&](int64_t g, V *acc, float *sacc) {
            Decoded o;
            Q::decode(wr + (g / G) * Q::BYTES, (int)(g % G), o);
            for (int m = 0; m < M; m++)
                dot32<Q>(o, x + m * K + 32 * g, Q::BIAS ? xsum[m * ng + g] : 0.0f, acc[m], sacc[m]);
        };
        int64_t g = 0;
        for (; g + 2 <= ng; g += 2) {
            group(g, acc0, sacc0);
            group(g + 1, acc1, sacc1);
        }
        if (g < ng) group(g, acc0, sacc0);
        for (int m = 0; m < M; m++)
            y[m * N + n] = vsum(vadd(acc0[m], acc1[m])) + (sacc0[m] + sacc1[m]);
    }
    delete[] heap;
}

// one input row (decoding): two weight rows at a time share the loads of x and give four
// independent FMA chains
template <class Q>
void gemv_1x2(const float *x, int64_t K, const uint8_t *w, float *y, int64_t n0, int64_t n1) {
    const int64_t nb = K / Q::QK, row_bytes = nb * Q::BYTES, ng = K / 32;
    constexpr int G = Q::QK / 32;
    float xs_stack[64];
    float *xsum = ng <= 64 ? xs_stack : new float[ng];
    if (Q::BIAS)
        for (int64_t g = 0; g < ng; g++)
            xsum[g] = vsum(vadd(vload(x + 32 * g), vload(x + 32 * g + 16)));
    int64_t n = n0;
    for (; n + 2 <= n1; n += 2) {
        const uint8_t *w0 = w + n * row_bytes, *w1 = w0 + row_bytes;
        V a0 = vzero(), a1 = a0, b0 = a0, b1 = a0;
        float s0 = 0.0f, s1 = 0.0f;
        for (int64_t g = 0; g < ng; g++) {
            Decoded p, q;
            Q::decode(w0 + (g / G) * Q::BYTES, (int)(g % G), p);
            Q::decode(w1 + (g / G) * Q::BYTES, (int)(g % G), q);
            const V xlo = vload(x + 32 * g), xhi = vload(x + 32 * g + 16);
            if (Q::SAME) {
                a0 = vfma(vset(p.dlo), vfma(p.qhi, xhi, vmul(p.qlo, xlo)), a0);
                b0 = vfma(vset(q.dlo), vfma(q.qhi, xhi, vmul(q.qlo, xlo)), b0);
            } else {
                a0 = vfma(vset(p.dlo), vmul(p.qlo, xlo), a0);
                a1 = vfma(vset(p.dhi), vmul(p.qhi, xhi), a1);
                b0 = vfma(vset(q.dlo), vmul(q.qlo, xlo), b0);
                b1 = vfma(vset(q.dhi), vmul(q.qhi, xhi), b1);
            }
            if (Q::BIAS) s0 += p.bias * xsum[g], s1 += q.bias * xsum[g];
        }
        y[n] = vsum(vadd(a0, a1)) + s0;
        y[n + 1] = vsum(vadd(b0, b1)) + s1;
    }
    if (xsum != xs_stack) delete[] xsum;
    if (n < n1) gemv_rows<Q, 1>(x, K, w, y, 0, n, n1);
}

template <class Q>
void gemv_m(const float *x, int64_t M, int64_t K, const uint8_t *w, float *y, int64_t N,
            int64_t n0, int64_t n1) {
    switch (M) {
        case 1: return gemv_1x2<Q>(x, K, w, y, n0, n1);
        case 2: return gemv_rows<Q, 2>(x, K, w, y, N, n0, n1);
        case 3: return gemv_rows<Q, 3>(x, K, w, y, N, n0, n1);
        case 4: return gemv_rows<Q, 4>(x, K, w, y, N, n0, n1);
        default:  // 5..8 rows: two passes over the weights (still read from cache-friendly rows)
            gemv_rows<Q, 4>(x, K, w, y, N, n0, n1);
            return gemv_m<Q>(x + 4 * K, M - 4, K, w, y + 4 * N, N, n0, n1);
    }
}

template <class Q>
void dequant_rows(const uint8_t *w, int64_t K, float *out, int64_t n0, int64_t n1) {
    const int64_t nb = K / Q::QK, row_bytes = nb * Q::BYTES;
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = w + n * row_bytes + b * Q::BYTES;
            for (int j = 0; j < Q::QK / 32; j++) {
                Decoded d;
                Q::decode(blk, j, d);
                V lo = vmul(vset(d.dlo), d.qlo), hi = vmul(vset(d.dhi), d.qhi);
                if (Q::BIAS) lo = vadd(lo, vset(d.bias)), hi = vadd(hi, vset(d.bias));
                float *o = out + n * K + b * Q::QK + 32 * j;
                vstore(o, lo);
                vstore(o + 16, hi);
            }
        }
    }
}

}  // namespace

bool qtype_known(int64_t qtype) {
    return qtype == Q4_0 || qtype == Q4_1 || qtype == Q5_0 || qtype == Q5_1 || qtype == Q8_0 ||
           qtype == Q4_K || qtype == Q6_K || qtype == Q4_1X || qtype == Q8_0X;
}
int64_t qtype_block(int64_t qtype) { return qtype == Q4_K || qtype == Q6_K ? 256 : 32; }
int64_t qtype_bytes(int64_t qtype) {
    switch (qtype) {
        case Q4_0: return BQ4_0::BYTES;
        case Q4_1: return BQ4_1::BYTES;
        case Q4_1X: return BQ4_1::BYTES;  // the same bytes, regrouped
        case Q8_0X: return BQ8_0::BYTES;
        case Q5_0: return BQ5_0::BYTES;
        case Q5_1: return BQ5_1::BYTES;
        case Q8_0: return BQ8_0::BYTES;
        case Q4_K: return BQ4_K::BYTES;
        case Q6_K: return BQ6_K::BYTES;
        default: return 0;
    }
}

void gemv_q(int64_t qtype, const float *x, int64_t M, int64_t K, const uint8_t *w, float *y,
            int64_t N, int64_t n0, int64_t n1) {
    switch (qtype) {
        case Q4_0: return gemv_m<BQ4_0>(x, M, K, w, y, N, n0, n1);
        case Q4_1: return gemv_m<BQ4_1>(x, M, K, w, y, N, n0, n1);
        case Q5_0: return gemv_m<BQ5_0>(x, M, K, w, y, N, n0, n1);
        case Q5_1: return gemv_m<BQ5_1>(x, M, K, w, y, N, n0, n1);
        case Q8_0: return gemv_m<BQ8_0>(x, M, K, w, y, N, n0, n1);
        case Q4_K: return gemv_m<BQ4_K>(x, M, K, w, y, N, n0, n1);
        case Q6_K: return gemv_m<BQ6_K>(x, M, K, w, y, N, n0, n1);
        default: return;
    }
}

void dequant_q(int64_t qtype, const uint8_t *w, int64_t K, float *out, int64_t n0, int64_t n1) {
    switch (qtype) {
        case Q4_0: return dequant_rows<BQ4_0>(w, K, out, n0, n1);
        case Q4_1: return dequant_rows<BQ4_1>(w, K, out, n0, n1);
        case Q5_0: return dequant_rows<BQ5_0>(w, K, out, n0, n1);
        case Q5_1: return dequant_rows<BQ5_1>(w, K, out, n0, n1);
        case Q8_0: return dequant_rows<BQ8_0>(w, K, out, n0, n1);
        case Q4_K: return dequant_rows<BQ4_K>(w, K, out, n0, n1);
        case Q6_K: return dequant_rows<BQ6_K>(w, K, out, n0, n1);
        case Q4_1X: return dequant_q4x(w, K, out, n0, n1);
        case Q8_0X: return dequant_q8x(w, K, out, n0, n1);
        default: return;
    }
}

}  // namespace hc

// ---- int8 activations (llama.cpp's scheme): each 32-value group of x is rounded to int8 with
// its own scale dx = max|x| / 127, and a block's sum is d * dx * sum(q * xq) in int32 (VNNI
// vpdpbusd where the CPU has it, else vpmaddubsw + vpmaddwd), + m * sum(x) for Q4_1. About a
// third of the float path's instructions per block; the rounding of x changes the result by
// ~0.3% of a row's magnitude (llama.cpp decodes the same way).
namespace hc {
namespace {

static inline __m256i dot_u8s8(__m256i u, __m256i s) {  // 8 int32 sums of 4 u8*s8 products
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// x (M, K) -> xq (M, K) int8, dx (M, K/32), xs = sum of x per group (M, K/32)
}  // namespace

void quantize_rows(const float *x, int64_t M, int64_t K, int8_t *xq, float *dx, float *xs) {
    const int64_t ng = K / 32;
    for (int64_t m = 0; m < M; m++)
        for (int64_t g = 0; g < ng; g++) {
            const float *p = x + m * K + 32 * g;
            __m256 v[4], amax = _mm256_setzero_ps(), sum = _mm256_setzero_ps();
            const __m256 sign = _mm256_set1_ps(-0.0f);
            for (int i = 0; i < 4; i++) {
                v[i] = _mm256_loadu_ps(p + 8 * i);
                amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[i]));
                sum = _mm256_add_ps(sum, v[i]);
            }
            __m128 a = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
            a = _mm_max_ps(a, _mm_movehl_ps(a, a));
            a = _mm_max_ss(a, _mm_movehdup_ps(a));
            const float am = _mm_cvtss_f32(a), d = am / 127.0f, id = am > 0 ? 127.0f / am : 0.0f;
            dx[m * ng + g] = d;
            xs[m * ng + g] = hsum8(sum);
            __m256i q[4];
            for (int i = 0; i < 4; i++)
                q[i] = _mm256_cvtps_epi32(_mm256_mul_ps(v[i], _mm256_set1_ps(id)));
            // int32 -> int8, in order: packs interleave 128-bit lanes, the permute undoes it
            __m256i s01 = _mm256_packs_epi32(q[0], q[1]), s23 = _mm256_packs_epi32(q[2], q[3]);
            __m256i b = _mm256_packs_epi16(s01, s23);
            b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)(xq + m * K + 32 * g), b);
        }
}

namespace {

struct A4_0 {  // q - 8: d * dx * sum(q * xq) - 8 * d * sum(x)
    static constexpr int BYTES = 18;
    static __m256i q(const uint8_t *b) {
        __m128i v = load16(b + 2), m = _mm_set1_epi8(0x0F);
        return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
    }
    static __m256i x(__m256i, __m256i xq) { return xq; }
    static __m256i u(__m256i q) { return q; }
    static float d(const uint8_t *b) { return fp16(b); }
    static float bias(const uint8_t *b) { return -8.0f * fp16(b); }
};
struct A4_1 {  // d * dx * sum(q * xq) + m * sum(x)
    static constexpr int BYTES = 20;
    static __m256i q(const uint8_t *b) {
        __m128i v = load16(b + 4), m = _mm_set1_epi8(0x0F);
        return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
    }
    static __m256i x(__m256i, __m256i xq) { return xq; }
    static __m256i u(__m256i q) { return q; }
    static float d(const uint8_t *b) { return fp16(b); }
    static float bias(const uint8_t *b) { return fp16(b + 2); }
};
struct A8_0 {  // signed q: sum(|q| * sign(xq, q))
    static constexpr int BYTES = 34;
    static __m256i q(const uint8_t *b) { return _mm256_loadu_si256((const __m256i *)(b + 2)); }
    static __m256i x(__m256i q, __m256i xq) { return _mm256_sign_epi8(xq, q); }
    static __m256i u(__m256i q) { return _mm256_sign_epi8(q, q); }
    static float d(const uint8_t *b) { return fp16(b); }
    static float bias(const uint8_t *) { return 0.0f; }
};

template <class A, int M>
void gemv_a8_rows(const int8_t *xq, const float *dx, const float *xs, int64_t K,
                  const uint8_t *w, float *y, int64_t N, int64_t n0, int64_t n1) {
    const int64_t ng = K / 32, row_bytes = ng * A::BYTES;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wr = w + n * row_bytes;
        __m256 acc0[M], acc1[M];
        float sacc[M];
        for (int m = 0; m < M; m++)
            acc0[m] = acc1[m] = _mm256_setzero_ps(), sacc[m] = 0.0f;
        auto block = [&](int64_t g, __m256 *acc) {
            const uint8_t *b = wr + g * A::BYTES;
            const __m256i q = A::q(b), uq = A::u(q);
            const float d = A::d(b), bias = A::bias(b);
            for (int m = 0; m < M; m++) {
                const __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + m * K + 32 * g));
                const __m256 s = _mm256_cvtepi32_ps(dot_u8s8(uq, A::x(q, xv)));
                acc[m] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx[m * ng + g]), s, acc[m]);
                sacc[m] += bias * xs[m * ng + g];
            }
        };
        int64_t g = 0;
        for (; g + 2 <= ng; g += 2) {
            block(g, acc0);
            block(g + 1, acc1);
        }
        if (g < ng) block(g, acc0);
        for (int m = 0; m < M; m++) y[m * N + n] = hsum8(_mm256_add_ps(acc0[m], acc1[m])) + sacc[m];
    }
}

template <class A>
void gemv_a8_m(const int8_t *xq, const float *dx, const float *xs, int64_t M, int64_t K,
               const uint8_t *w, float *y, int64_t N, int64_t n0, int64_t n1) {
    const int64_t ng = K / 32;
    switch (M) {
        case 1: return gemv_a8_rows<A, 1>(xq, dx, xs, K, w, y, N, n0, n1);
        case 2: return gemv_a8_rows<A, 2>(xq, dx, xs, K, w, y, N, n0, n1);
        case 3: return gemv_a8_rows<A, 3>(xq, dx, xs, K, w, y, N, n0, n1);
        case 4: return gemv_a8_rows<A, 4>(xq, dx, xs, K, w, y, N, n0, n1);
        default:
            gemv_a8_rows<A, 4>(xq, dx, xs, K, w, y, N, n0, n1);
            return gemv_a8_m<A>(xq + 4 * K, dx + 4 * ng, xs + 4 * ng, M - 4, K, w, y + 4 * N,
                                N, n0, n1);
    }
}

}  // namespace

bool qtype_int8_activations(int64_t qtype) { return qtype == Q4_0 || qtype == Q4_1 || qtype == Q8_0; }

void gemv_q_a8(int64_t qtype, const int8_t *xq, const float *dx, const float *xs, int64_t M,
               int64_t K, const uint8_t *w, float *y, int64_t N, int64_t n0, int64_t n1) {
    switch (qtype) {
        case Q4_0: return gemv_a8_m<A4_0>(xq, dx, xs, M, K, w, y, N, n0, n1);
        case Q4_1: return gemv_a8_m<A4_1>(xq, dx, xs, M, K, w, y, N, n0, n1);
        case Q8_0: return gemv_a8_m<A8_0>(xq, dx, xs, M, K, w, y, N, n0, n1);
        default: return;
    }
}

}  // namespace hc
