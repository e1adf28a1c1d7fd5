// Batch-1 matrix-vector products for float32, bfloat16 and int8 (per-row scale) weights.
// Each weight row is read once per call: 4 rows at a time, each input row against them,
// float32 accumulation with FMA. The sums run in a different order than torch's GEMM, so
// results equal F.linear up to float rounding.
#include "kernels.h"
#include "simd.h"

namespace hc {
namespace {

// Software prefetch of each of the 4 weight rows, PREFETCH bytes ahead, once per 256 bytes: on
// a 2-core AVX-512 Xeon, streaming 600 MB of float32 rows, 19.2 -> 21.4 GB/s with 2 threads
// (10.6 -> 11.9 with one; a plain AVX-512 read of the same bytes: 20.0 and 10.9). Every line,
// or every 2nd, gained less; 2 KB or 8 KB ahead, about the same.
constexpr int PREFETCH = 4096;

// the prefetch above for 4 rows at element k (every 4th line: k elements of T in 256 bytes).
// Always inlined: a prefetch has no effect GCC can see, so where it kept this out of line it
// judged the call side-effect free and deleted it (the bfloat16 loops lost their prefetch)
template <class T>
__attribute__((always_inline)) inline void prefetch4(const T *w0, const T *w1, const T *w2, const T *w3, int64_t k) {
    if (k * (int64_t)sizeof(T) % 256 == 0) {
        _mm_prefetch((const char *)(w0 + k) + PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)(w1 + k) + PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)(w2 + k) + PREFETCH, _MM_HINT_T0);
        _mm_prefetch((const char *)(w3 + k) + PREFETCH, _MM_HINT_T0);
    }
}

struct F32 {
    using T = float;
    static V load(const float *p) { return vload(p); }
    static float one(const float *p) { return *p; }
};
struct BF16 {
    using T = uint16_t;
    static V load(const uint16_t *p) { return vload_bf16(p); }
    static float one(const uint16_t *p) { return bf16(*p); }
};
struct I8 {
    using T = int8_t;
    static V load(const int8_t *p) { return vfrom_s8(load16((const uint8_t *)p)); }
    static float one(const int8_t *p) { return (float)*p; }
};

// The dot products of one input row (X) with weight rows (T): four<PF>(x, K, w0, out) against
// the rows w0 .. w0 + 3K (PF: prefetch them: decoding's one input row, nothing else reads them
// again while they stream), one(x, K, w) against one row.

// a float32 input row against W's weights widened exactly to float32
template <class W>
struct Widened {
    using X = float;
    using T = typename W::T;
    template <bool PF>
    static void four(const float *x, int64_t K, const T *w0, float *out) {
        const T *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
        const int64_t K16 = K - K % 16;
        V a0 = vzero(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k = 0; k < K16; k += 16) {
            if (PF) prefetch4(w0, w1, w2, w3, k);
            const V xv = vload(x + k);
            a0 = vfma(xv, W::load(w0 + k), a0);
            a1 = vfma(xv, W::load(w1 + k), a1);
            a2 = vfma(xv, W::load(w2 + k), a2);
            a3 = vfma(xv, W::load(w3 + k), a3);
        }
        out[0] = vsum(a0), out[1] = vsum(a1), out[2] = vsum(a2), out[3] = vsum(a3);
        for (int64_t k = K16; k < K; k++) {
            out[0] += x[k] * W::one(w0 + k);
            out[1] += x[k] * W::one(w1 + k);
            out[2] += x[k] * W::one(w2 + k);
            out[3] += x[k] * W::one(w3 + k);
        }
    }
    static float one(const float *x, int64_t K, const T *w) {
        const int64_t K16 = K - K % 16;
        V a = vzero();
        for (int64_t k = 0; k < K16; k += 16) a = vfma(vload(x + k), W::load(w + k), a);
        float out = vsum(a);
        for (int64_t k = K16; k < K; k++) out += x[k] * W::one(w + k);
        return out;
    }
};

#if defined(__AVX512BF16__)
inline __m512bh bh(const uint16_t *p) { return (__m512bh)_mm512_loadu_si512(p); }

// a bfloat16 input row against bfloat16 weights: pairs of bfloat16 products summed into
// float32 lanes (exact products, float32 sums). 4 rows at a time with the prefetch, against one
// row at a time without (as before 3b865a1): SmolLM2's 121 bfloat16 matrices in the model's
// order, both builds in one process, 2-core AVX512-BF16 Xeon: 0.94x the time at 2 threads,
// 0.88-0.91x at one
struct PairsBF16 {
    using X = uint16_t;
    using T = uint16_t;
    template <bool PF>
    static void four(const uint16_t *x, int64_t K, const uint16_t *w0, float *out) {
        const uint16_t *w1 = w0 + K, *w2 = w1 + K, *w3 = w2 + K;
        const int64_t K32 = K - K % 32;
        __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int64_t k = 0; k < K32; k += 32) {
            if (PF) prefetch4(w0, w1, w2, w3, k);
            const __m512bh xv = bh(x + k);
            a0 = _mm512_dpbf16_ps(a0, xv, bh(w0 + k));
            a1 = _mm512_dpbf16_ps(a1, xv, bh(w1 + k));
            a2 = _mm512_dpbf16_ps(a2, xv, bh(w2 + k));
            a3 = _mm512_dpbf16_ps(a3, xv, bh(w3 + k));
        }
        out[0] = _mm512_reduce_add_ps(a0), out[1] = _mm512_reduce_add_ps(a1);
        out[2] = _mm512_reduce_add_ps(a2), out[3] = _mm512_reduce_add_ps(a3);
        for (int64_t k = K32; k < K; k++) {
            const float xk = bf16(x[k]);
            out[0] += xk * bf16(w0[k]), out[1] += xk * bf16(w1[k]);
            out[2] += xk * bf16(w2[k]), out[3] += xk * bf16(w3[k]);
        }
    }
    static float one(const uint16_t *x, int64_t K, const uint16_t *w) {
        const int64_t K32 = K - K % 32;
        __m512 a = _mm512_setzero_ps();
        for (int64_t k = 0; k < K32; k += 32) a = _mm512_dpbf16_ps(a, bh(x + k), bh(w + k));
        float out = _mm512_reduce_add_ps(a);
        for (int64_t k = K32; k < K; k++) out += bf16(x[k]) * bf16(w[k]);
        return out;
    }
};
#endif

// the loop every GEMV shares: weight rows n0 .. n1 - 1, 4 at a time with each input row (one
// input row: Dot::four<true>, prefetching), then the last (n1 - n0) % 4 alone; y (M, N)
template <class Dot>
void gemv_rows(const typename Dot::X *x, int64_t M, int64_t K, const typename Dot::T *w,
               const float *scale, float *y, int64_t N, int64_t n0, int64_t n1) {
    int64_t n = n0;
    for (; n + 4 <= n1; n += 4)
        for (int64_t m = 0; m < M; m++) {
            float out[4];
            if (M == 1)
                Dot::template four<true>(x, K, w + n * K, out);
            else
                Dot::template four<false>(x + m * K, K, w + n * K, out);
            for (int r = 0; r < 4; r++) y[m * N + n + r] = scale ? out[r] * scale[n + r] : out[r];
        }
    for (; n < n1; n++)
        for (int64_t m = 0; m < M; m++) {
            const float out = Dot::one(x + m * K, K, w + n * K);
            y[m * N + n] = scale ? out * scale[n] : out;
        }
}

}  // namespace

void gemv_f32(const float *x, int64_t M, int64_t K, const float *w, float *y, int64_t N,
              int64_t n0, int64_t n1) {
    gemv_rows<Widened<F32>>(x, M, K, w, nullptr, y, N, n0, n1);
}
void gemv_bf16(const float *x, int64_t M, int64_t K, const uint16_t *w, float *y, int64_t N,
               int64_t n0, int64_t n1) {
    gemv_rows<Widened<BF16>>(x, M, K, w, nullptr, y, N, n0, n1);
}
void gemv_i8(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale,
             float *y, int64_t N, int64_t n0, int64_t n1) {
    gemv_rows<Widened<I8>>(x, M, K, w, scale, y, N, n0, n1);
}

bool gemv_bf16_bf16(const uint16_t *x, int64_t M, int64_t K, const uint16_t *w, float *y,
                    int64_t N, int64_t n0, int64_t n1) {
#if defined(__AVX512BF16__)
    gemv_rows<PairsBF16>(x, M, K, w, nullptr, y, N, n0, n1);
    return true;
#else
    (void)x, (void)M, (void)K, (void)w, (void)y, (void)N, (void)n0, (void)n1;
    return false;
#endif
}

}  // namespace hc
