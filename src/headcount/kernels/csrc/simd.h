// A 16-float vector for the headcount kernels: one zmm register with AVX-512F, two ymm with AVX2.
// The kernels are written once against this type and compiled once per instruction set.
#pragma once

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

// `v` kept in a register: GCC otherwise folds a load into every instruction that uses it, and so
// reads it again per use (a cache-line split each time when the load straddles two lines, as
// 80-byte Q4_1x groups do: 4 split loads a group cost the GEMV 10-20%)
template <class T>
static inline T in_register(T v) {
    __asm__("" : "+v"(v));
    return v;
}

namespace hc {

#ifdef __AVX512F__
struct V {
    __m512 v;
};
static inline V vzero() { return {_mm512_setzero_ps()}; }
static inline V vset(float a) { return {_mm512_set1_ps(a)}; }
static inline V vload(const float *p) { return {_mm512_loadu_ps(p)}; }
static inline void vstore(float *p, V a) { _mm512_storeu_ps(p, a.v); }
static inline V vadd(V a, V b) { return {_mm512_add_ps(a.v, b.v)}; }
static inline V vsub(V a, V b) { return {_mm512_sub_ps(a.v, b.v)}; }
static inline V vmul(V a, V b) { return {_mm512_mul_ps(a.v, b.v)}; }
static inline V vfma(V a, V b, V c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
static inline float vsum(V a) { return _mm512_reduce_add_ps(a.v); }
static inline float vhmax(V a) { return _mm512_reduce_max_ps(a.v); }  // max of the lanes
// 16 bytes -> 16 floats
static inline V vfrom_u8(__m128i b) { return {_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b))}; }
static inline V vfrom_s8(__m128i b) { return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b))}; }
// 16 bfloat16 values (the high halves of float32) -> 16 floats, exactly
static inline V vload_bf16(const uint16_t *p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
}
static inline V vmax(V a, V b) { return {_mm512_max_ps(a.v, b.v)}; }
static inline V vdiv(V a, V b) { return {_mm512_div_ps(a.v, b.v)}; }
static inline V vmin(V a, V b) { return {_mm512_min_ps(a.v, b.v)}; }
static inline V vround(V a) {  // to the nearest integer
    return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
static inline V vscale2(V p, V n) { return {_mm512_scalef_ps(p.v, n.v)}; }  // p * 2^n
#else
struct V {
    __m256 a, b;
};
static inline V vzero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
static inline V vset(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
static inline V vload(const float *p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline void vstore(float *p, V x) {
    _mm256_storeu_ps(p, x.a);
    _mm256_storeu_ps(p + 8, x.b);
}
static inline V vadd(V x, V y) { return {_mm256_add_ps(x.a, y.a), _mm256_add_ps(x.b, y.b)}; }
static inline V vsub(V x, V y) { return {_mm256_sub_ps(x.a, y.a), _mm256_sub_ps(x.b, y.b)}; }
static inline V vmul(V x, V y) { return {_mm256_mul_ps(x.a, y.a), _mm256_mul_ps(x.b, y.b)}; }
static inline V vfma(V x, V y, V z) {
    return {_mm256_fmadd_ps(x.a, y.a, z.a), _mm256_fmadd_ps(x.b, y.b, z.b)};
}
static inline float vsum(V x) {
    __m256 v = _mm256_add_ps(x.a, x.b);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float vhmax(V x) {  // the max of the lanes
    __m256 v = _mm256_max_ps(x.a, x.b);
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline V vfrom_u8(__m128i b) {
    return {_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)),
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(b, 8)))};
}
static inline V vfrom_s8(__m128i b) {
    return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)),
            _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)))};
}
static inline V vload_bf16(const uint16_t *p) {
    __m128i lo = _mm_loadu_si128((const __m128i *)p), hi = _mm_loadu_si128((const __m128i *)(p + 8));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(lo), 16)),
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(hi), 16))};
}
static inline V vmax(V x, V y) { return {_mm256_max_ps(x.a, y.a), _mm256_max_ps(x.b, y.b)}; }
static inline V vdiv(V x, V y) { return {_mm256_div_ps(x.a, y.a), _mm256_div_ps(x.b, y.b)}; }
static inline V vmin(V x, V y) { return {_mm256_min_ps(x.a, y.a), _mm256_min_ps(x.b, y.b)}; }
static inline V vround(V x) {  // to the nearest integer
    const int m = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    return {_mm256_round_ps(x.a, m), _mm256_round_ps(x.b, m)};
}
static inline __m256 scale2(__m256 p, __m256 n) {  // p * 2^n, n integral in [-127, 128]:
    const __m256i ni = _mm256_cvtps_epi32(n);     // two factors, each a normal power of 2
    const __m256i h = _mm256_srai_epi32(ni, 1), bias = _mm256_set1_epi32(127);
    const __m256 f1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, bias), 23));
    const __m256 f2 =
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), bias), 23));
    return _mm256_mul_ps(_mm256_mul_ps(p, f1), f2);
}
static inline V vscale2(V p, V n) { return {scale2(p.a, n.a), scale2(p.b, n.b)}; }
#endif

// the sums of 16 vectors as one vector: element j = vsum(a[j]) (a transpose-and-add)
static inline V vsum16(const V *a) {
#ifdef __AVX512F__
    __m512 b[8], c[4];
    for (int k = 0; k < 8; k++)  // per 128-bit lane: [a2k 0+2, a2k+1 0+2, a2k 1+3, a2k+1 1+3]
        b[k] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * k].v, a[2 * k + 1].v),
                             _mm512_unpackhi_ps(a[2 * k].v, a[2 * k + 1].v));
    for (int k = 0; k < 4; k++)  // per 128-bit lane: the lane's sums of a4k .. a4k+3
        c[k] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * k], b[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(b[2 * k], b[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    // lanes [c0 L0+L1, c0 L2+L3, c1 L0+L1, c1 L2+L3], the same of c2, c3; then lane k = ck's total
    const __m512 d0 = _mm512_add_ps(_mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(c[0], c[1], _MM_SHUFFLE(3, 1, 3, 1)));
    const __m512 d1 = _mm512_add_ps(_mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(2, 0, 2, 0)),
                                    _mm512_shuffle_f32x4(c[2], c[3], _MM_SHUFFLE(3, 1, 3, 1)));
    return {_mm512_add_ps(_mm512_shuffle_f32x4(d0, d1, _MM_SHUFFLE(2, 0, 2, 0)),
                          _mm512_shuffle_f32x4(d0, d1, _MM_SHUFFLE(3, 1, 3, 1)))};
#else
    alignas(32) float t[16];
    for (int j = 0; j < 16; j++) t[j] = vsum(a[j]);
    return vload(t);
#endif
}

// exp(x) for float32 (Cephes' expf: x = n ln2 + r, a degree-7 polynomial in r, times 2^n);
// within 2 ulp of the exact value for x in [-87.3, 88.7], x clamped to that range outside it
static inline V vexp(V x) {
    x = vmin(vmax(x, vset(-87.33654f)), vset(88.72283f));
    const V n = vround(vmul(x, vset(1.44269504088896341f)));
    V r = vfma(n, vset(-0.693359375f), x);  // x - n ln 2, ln 2 in two parts
    r = vfma(n, vset(2.12194440e-4f), r);
    V p = vset(1.9875691500E-4f);
    p = vfma(p, r, vset(1.3981999507E-3f));
    p = vfma(p, r, vset(8.3334519073E-3f));
    p = vfma(p, r, vset(4.1665795894E-2f));
    p = vfma(p, r, vset(1.6666665459E-1f));
    p = vfma(p, r, vset(5.0000001201E-1f));
    p = vfma(p, vmul(r, r), vadd(r, vset(1.0f)));
    return vscale2(p, n);
}

static inline __m128i load16(const uint8_t *p) { return _mm_loadu_si128((const __m128i *)p); }
static inline float fp16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}
static inline float bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// Storage types of the float kernels (norm, pointwise, attention): float32 or bfloat16 held as
// uint16_t. to_f widens; put stores a float rounded to the type (bfloat16: to nearest even, as
// torch rounds); rnd(v, T()) is v rounded to T and widened back (what a torch op's output in T
// holds)
static inline float to_f(float v) { return v; }
static inline float to_f(uint16_t v) { return bf16(v); }
static inline uint16_t round_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);  // quiet NaN
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}
static inline void put(float *o, float v) { *o = v; }
static inline void put(uint16_t *o, float v) { *o = round_bf16(v); }
static inline float rnd(float v, float) { return v; }
static inline float rnd(float v, uint16_t) { return bf16(round_bf16(v)); }
static inline V vload_t(const float *p) { return vload(p); }
static inline V vload_t(const uint16_t *p) { return vload_bf16(p); }

}  // namespace hc
