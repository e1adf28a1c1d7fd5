// GGUF Q4_1 and Q8_0 rows regrouped for 16-bit integer dot products ("Q4_1x", "Q8_0x").
//
// Q4_1x: the same bytes as a GGUF Q4_1 row
// (d, m and 32 nibbles per 32 values, 20 bytes a block), regrouped so a 64-byte load holds 128
// values whose nibbles come apart with shifts and masks inside 16-bit lanes, and 16-bit integer
// dot products (AVX512-VNNI vpdpwssd, else vpmaddwd) multiply them with the input rounded to
// int16 per 32 values. Compared with decoding every value to float (quant_gemv.cpp), a block
// costs about a third of the instructions, and nothing needs a cross-lane shuffle.
//
// Row layout (K values, nb = K / 32 blocks): groups of 4 blocks (128 values), each
//     64 bytes: 32 little-endian 16-bit words; bits 4j..4j+3 of word w hold value 8j + w % 8 of
//               the group's block w / 8 (j = 0..3)
//     8 bytes:  d of the 4 blocks (fp16);  8 bytes: m of the 4 blocks (fp16)
// and a last group of r = nb % 4 blocks: 16r bytes of words (words 0..8r-1), d[r], m[r].
// Value = d * q + m, as in Q4_1 (dequant_q4x computes it as gguf does, rounded twice).
//
// Q8_0x: the same bytes as a GGUF Q8_0 row (d and 32 int8 per 32 values, 34 bytes a block);
// groups of 4 blocks: 4 slabs of 32 int8 (byte w of slab j = value 8j + w % 8 of block w / 8,
// the order of Q4_1x's nibbles), then d[4]; a last group of r blocks: 4 slabs of 8r, d[r]. The
// int8 values widen to int16 by one sign extension per 32 (no float conversion per value).
//
// The input: each 32 values x of a block are rounded to int16 with dx = max|x| / 32767, so
// sum(w * x) = d * dx * sum(q * xq) + m * sum(x) up to that rounding (relative error <= 2^-16 of
// the block's largest |x|; int8, llama.cpp's choice, is 256 times coarser).
#include <new>
#include <vector>

#include "kernels.h"
#include "simd.h"

namespace hc {
namespace {

constexpr int GROUP_BYTES = 80;  // 4 Q4_1x blocks
#ifndef HC_PREFETCH
#define HC_PREFETCH 4096
#endif
constexpr int PREFETCH = HC_PREFETCH;  // bytes ahead of the group being read

// an allocator of 64-byte aligned storage: a whole-vector load from it never splits a cache line
template <class T>
struct Aligned {
    using value_type = T;
    Aligned() = default;
    template <class U>
    Aligned(const Aligned<U> &) {}
    T *allocate(size_t n) {
        return static_cast<T *>(::operator new(n * sizeof(T), std::align_val_t(64)));
    }
    void deallocate(T *p, size_t) { ::operator delete(p, std::align_val_t(64)); }
    template <class U>
    bool operator==(const Aligned<U> &) const { return true; }
};
template <class T>
using AlignedVector = std::vector<T, Aligned<T>>;

// the input of one GEMV, rearranged like the weights: per group, 4 x 32 int16 (X[j][w] = the
// value weights' word w, nibble j multiplies; 0 past a short last group), 16 lane scales
// (dx of block l / 4 for 32-bit lane l) and 8 floats 0, 0, 0, 0 and the 4 blocks' sums of x (a
// group's fp16 d[4] m[4] times these is m * sum(x) in one 8-lane multiply-add)
struct Prepared {
    int64_t groups;
    AlignedVector<int16_t> xq;  // M * groups * 128
    AlignedVector<float> dx;    // M * groups * 16
    AlignedVector<float> xs;    // M * groups * 8
};

// block v (32 values) rounded to int16 into its words 8 bb .. 8 bb + 7 of the group's 4 x 32
// (value i to X[32 * (i / 8) + 8 bb + i % 8]); its dx and sum of x
static inline void prepare_block(const float *v, int16_t *X, int64_t bb, float &dx, float &sum) {
#ifdef __AVX512F__
    const __m512 a = _mm512_loadu_ps(v), b = _mm512_loadu_ps(v + 16);
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    sum = _mm512_reduce_add_ps(_mm512_add_ps(a, b));
    const __m512 id = _mm512_set1_ps(amax > 0 ? 32767.0f / amax : 0.0f);
    // rounded to nearest even, as __builtin_nearbyintf below (the default rounding mode)
    const __m256i qa = _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(a, id)));
    const __m256i qb = _mm512_cvtepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(b, id)));
    _mm_storeu_si128((__m128i *)(X + 8 * bb), _mm256_castsi256_si128(qa));
    _mm_storeu_si128((__m128i *)(X + 32 + 8 * bb), _mm256_extracti128_si256(qa, 1));
    _mm_storeu_si128((__m128i *)(X + 64 + 8 * bb), _mm256_castsi256_si128(qb));
    _mm_storeu_si128((__m128i *)(X + 96 + 8 * bb), _mm256_extracti128_si256(qb, 1));
#else
    float amax = 0.0f;
    sum = 0.0f;
    for (int i = 0; i < 32; i++) {
        const float a = v[i] < 0 ? -v[i] : v[i];
        amax = a > amax ? a : amax;
        sum += v[i];
    }
    const float id = amax > 0 ? 32767.0f / amax : 0.0f;
    for (int i = 0; i < 32; i++)
        X[32 * (i / 8) + 8 * bb + i % 8] = (int16_t)__builtin_nearbyintf(v[i] * id);
#endif
    dx = amax / 32767.0f;
}

void prepare(const float *x, int64_t M, int64_t K, Prepared &p) {
    const int64_t nb = K / 32, G = (nb + 3) / 4;
    p.groups = G;
    p.xq.assign(M * G * 128, 0);
    p.dx.assign(M * G * 16, 0.0f);
    p.xs.assign(M * G * 8, 0.0f);
    for (int64_t m = 0; m < M; m++)
        for (int64_t b = 0; b < nb; b++) {
            const int64_t bb = b % 4, at = m * G + b / 4;
            float dx, sum;
            prepare_block(x + m * K + 32 * b, p.xq.data() + at * 128, bb, dx, sum);
            for (int l = 0; l < 4; l++) p.dx[at * 16 + 4 * bb + l] = dx;
            p.xs[at * 8 + 4 + bb] = sum;
        }
}

// Both layouts decode a group to 4 x 32 int16 "a[j]" (word w of a[j] multiplies X[j][w]) and
// its scales f = d[4] m[4] (m = 0 for Q8_0x): group_dot sums a[j] * X[j] per 32-bit lane (the
// lanes of block l / 4), scales each lane by its block's d * dx and adds m * sum(x).
#ifdef __AVX512F__
static inline __m512 lane_scales(__m256 f) {  // d[4] m[4] as floats -> d of lane l / 4
    const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutexvar_ps(idx, _mm512_castps256_ps512(f));
}
static inline __m512i dot16(__m512i acc, __m512i a, const int16_t *x) {
    const __m512i xv = _mm512_loadu_si512((const void *)x);
#ifdef __AVX512VNNI__
    return _mm512_dpwssd_epi32(acc, a, xv);
#else
    return _mm512_add_epi32(acc, _mm512_madd_epi16(a, xv));
#endif
}
struct Group {
    __m512i a[4];
    __m256 f;
};
using Acc = __m512;
static inline Acc acc_zero() { return _mm512_setzero_ps(); }
template <int M, bool BIAS>
static inline void group_dot(const Group &q, const Prepared &p, int64_t g, Acc *acc, __m256 *macc) {
    const __m512 d = lane_scales(q.f);
    for (int m = 0; m < M; m++) {
        const int64_t at = m * p.groups + g;
        const int16_t *X = p.xq.data() + at * 128;
        __m512i s = dot16(_mm512_setzero_si512(), q.a[0], X);
        __m512i t = dot16(_mm512_setzero_si512(), q.a[1], X + 32);
        s = dot16(s, q.a[2], X + 64);
        t = dot16(t, q.a[3], X + 96);
        const __m512 sc = _mm512_mul_ps(d, _mm512_loadu_ps(p.dx.data() + at * 16));
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s, t)), sc, acc[m]);
        if (BIAS) macc[m] = _mm256_fmadd_ps(q.f, _mm256_load_ps(p.xs.data() + at * 8), macc[m]);
    }
}
static inline float finish(Acc acc, __m256 macc) {
    return _mm512_reduce_add_ps(_mm512_add_ps(acc, _mm512_zextps256_ps512(macc)));
}
static inline void q4_split(__m512i W, Group &q) {  // nibble j of every word
    const __m512i lo4 = _mm512_set1_epi16(0x0F);
    q.a[0] = _mm512_and_si512(W, lo4);
    q.a[1] = _mm512_and_si512(_mm512_srli_epi16(W, 4), lo4);
    q.a[2] = _mm512_and_si512(_mm512_srli_epi16(W, 8), lo4);
    q.a[3] = _mm512_srli_epi16(W, 12);
}
static inline __m256 fp16x8(__m128i h) { return _mm256_cvtph_ps(h); }
struct Q4X {  // 64 bytes of words, d[4], m[4]
    static constexpr int BLOCK = 20, GROUP = 80;
    static constexpr bool BIAS = true;
    static void load(const uint8_t *w, Group &q) {
        q4_split(in_register(_mm512_loadu_si512((const void *)w)), q);
        q.f = fp16x8(_mm_loadu_si128((const __m128i *)(w + 64)));
    }
    static void load_short(const uint8_t *w, int64_t r, Group &q) {  // 16r bytes, d[r], m[r]
        q4_split(_mm512_maskz_loadu_epi16((__mmask32)((1u << (8 * r)) - 1), w), q);
        const __mmask8 k = (__mmask8)((1u << r) - 1);
        const __m128i d = _mm_maskz_loadu_epi16(k, w + 16 * r);
        q.f = fp16x8(_mm_unpacklo_epi64(d, _mm_maskz_loadu_epi16(k, w + 18 * r)));
    }
};
struct Q8X {  // 4 slabs of 32 int8, d[4]
    static constexpr int BLOCK = 34, GROUP = 136;
    static constexpr bool BIAS = false;
    static void load(const uint8_t *w, Group &q) {
        for (int j = 0; j < 4; j++)
            q.a[j] = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(w + 32 * j)));
        q.f = fp16x8(_mm_loadl_epi64((const __m128i *)(w + 128)));
    }
    static void load_short(const uint8_t *w, int64_t r, Group &q) {  // 4 slabs of 8r, d[r]
        const __mmask32 k = (__mmask32)((1u << (8 * r)) - 1);
        for (int j = 0; j < 4; j++)
            q.a[j] = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(k, w + 8 * r * j));
        q.f = fp16x8(_mm_maskz_loadu_epi16((__mmask8)((1u << r) - 1), w + 32 * r));
    }
};
#else  // AVX2: each 32 words as two halves of 16 (blocks 0-1, 2-3)
static inline __m256i dot16(__m256i acc, __m256i a, const int16_t *x) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, _mm256_loadu_si256((const __m256i *)x)));
}
struct Group {
    __m256i a[2][4];  // half h, nibble/slab j
    __m256 f;
};
struct Acc {
    __m256 a, b;
};
static inline Acc acc_zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
template <int M, bool BIAS>
static inline void group_dot(const Group &q, const Prepared &p, int64_t g, Acc *acc, __m256 *macc) {
    const __m256 d01 = _mm256_permutevar8x32_ps(q.f, _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1));
    const __m256 d23 = _mm256_permutevar8x32_ps(q.f, _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3));
    for (int m = 0; m < M; m++) {
        const int64_t at = m * p.groups + g;
        const int16_t *X = p.xq.data() + at * 128;
        const float *dx = p.dx.data() + at * 16;
        __m256i s0 = _mm256_setzero_si256(), s1 = s0;
        for (int j = 0; j < 4; j++) {
            s0 = dot16(s0, q.a[0][j], X + 32 * j);
            s1 = dot16(s1, q.a[1][j], X + 32 * j + 16);
        }
        acc[m].a = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s0),
                                   _mm256_mul_ps(d01, _mm256_loadu_ps(dx)), acc[m].a);
        acc[m].b = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s1),
                                   _mm256_mul_ps(d23, _mm256_loadu_ps(dx + 8)), acc[m].b);
        if (BIAS) macc[m] = _mm256_fmadd_ps(q.f, _mm256_load_ps(p.xs.data() + at * 8), macc[m]);
    }
}
static inline float finish(Acc acc, __m256 macc) {
    __m256 v = _mm256_add_ps(_mm256_add_ps(acc.a, acc.b), macc);
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
struct Q4X {
    static constexpr int BLOCK = 20, GROUP = 80;
    static constexpr bool BIAS = true;
    static void load(const uint8_t *w, Group &q) {
        const __m256i lo4 = _mm256_set1_epi16(0x0F);
        for (int h = 0; h < 2; h++) {
            const __m256i W = in_register(_mm256_loadu_si256((const __m256i *)(w + 32 * h)));
            q.a[h][0] = _mm256_and_si256(W, lo4);
            q.a[h][1] = _mm256_and_si256(_mm256_srli_epi16(W, 4), lo4);
            q.a[h][2] = _mm256_and_si256(_mm256_srli_epi16(W, 8), lo4);
            q.a[h][3] = _mm256_srli_epi16(W, 12);
        }
        q.f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + 64)));
    }
    static void load_short(const uint8_t *w, int64_t r, Group &q) {  // copied into a full group
        alignas(32) uint8_t buf[GROUP] = {0};
        memcpy(buf, w, 16 * r);
        memcpy(buf + 64, w + 16 * r, 2 * r);
        memcpy(buf + 72, w + 18 * r, 2 * r);
        load(buf, q);
    }
};
struct Q8X {
    static constexpr int BLOCK = 34, GROUP = 136;
    static constexpr bool BIAS = false;
    static void load(const uint8_t *w, Group &q) {
        for (int j = 0; j < 4; j++)
            for (int h = 0; h < 2; h++)
                q.a[h][j] = _mm256_cvtepi8_epi16(load16(w + 32 * j + 16 * h));
        q.f = _mm256_cvtph_ps(_mm_loadl_epi64((const __m128i *)(w + 128)));
    }
    static void load_short(const uint8_t *w, int64_t r, Group &q) {  // copied into a full group
        alignas(32) uint8_t buf[GROUP] = {0};
        for (int j = 0; j < 4; j++) memcpy(buf + 32 * j, w + 8 * r * j, 8 * r);
        memcpy(buf + 128, w + 32 * r, 2 * r);
        load(buf, q);
    }
};
#endif

template <class F, int M>
void rows_x(const Prepared &p, int64_t K, const uint8_t *w, float *y, int64_t N, int64_t n0,
            int64_t n1) {
    const int64_t nb = K / 32, full = nb / 4, r = nb % 4, row_bytes = nb * F::BLOCK;
    Group q;
    for (int64_t n = n0; n < n1; n++) {
        const uint8_t *wr = w + n * row_bytes;
        Acc acc[M];
        __m256 macc[M];
        for (int m = 0; m < M; m++) acc[m] = acc_zero(), macc[m] = _mm256_setzero_ps();
        for (int64_t g = 0; g < full; g++) {
            const uint8_t *at = wr + F::GROUP * g;
            _mm_prefetch((const char *)at + PREFETCH, _MM_HINT_T0);
            F::load(at, q);
            group_dot<M, F::BIAS>(q, p, g, acc, macc);
        }
        if (r) {  // a short group: zeros past its r blocks (the prepared input is 0 there too)
            F::load_short(wr + F::GROUP * full, r, q);
            group_dot<M, F::BIAS>(q, p, full, acc, macc);
        }
        for (int m = 0; m < M; m++) y[m * N + n] = finish(acc[m], macc[m]);
    }
}

template <class F>
void gemv_x(const Prepared &p, int64_t M, int64_t K, const uint8_t *w, float *y, int64_t N,
            int64_t n0, int64_t n1) {
    switch (M) {
        case 1: return rows_x<F, 1>(p, K, w, y, N, n0, n1);
        case 2: return rows_x<F, 2>(p, K, w, y, N, n0, n1);
        case 3: return rows_x<F, 3>(p, K, w, y, N, n0, n1);
        default: {  // 4 rows at a time
            Prepared part;
            for (int64_t m0 = 0; m0 < M; m0 += 4) {
                const int64_t mm = M - m0 < 4 ? M - m0 : 4;
                part.groups = p.groups;
                part.xq.assign(p.xq.begin() + m0 * p.groups * 128,
                               p.xq.begin() + (m0 + mm) * p.groups * 128);
                part.dx.assign(p.dx.begin() + m0 * p.groups * 16,
                               p.dx.begin() + (m0 + mm) * p.groups * 16);
                part.xs.assign(p.xs.begin() + m0 * p.groups * 8,
                               p.xs.begin() + (m0 + mm) * p.groups * 8);
                float *ym = y + m0 * N;
                switch (mm) {
                    case 1: rows_x<F, 1>(part, K, w, ym, N, n0, n1); break;
                    case 2: rows_x<F, 2>(part, K, w, ym, N, n0, n1); break;
                    case 3: rows_x<F, 3>(part, K, w, ym, N, n0, n1); break;
                    default: rows_x<F, 4>(part, K, w, ym, N, n0, n1); break;
                }
            }
        }
    }
}

}  // namespace

const void *x16_prepare(const float *x, int64_t M, int64_t K) {
    thread_local Prepared p;  // the calling thread's, reused (no allocation per call)
    prepare(x, M, K, p);
    return &p;
}

void gemv_x16(int64_t qtype, const void *prepared, int64_t M, int64_t K, const uint8_t *w,
              float *y, int64_t N, int64_t n0, int64_t n1) {
    const Prepared &p = *static_cast<const Prepared *>(prepared);
    if (qtype == Q4_1X) return gemv_x<Q4X>(p, M, K, w, y, N, n0, n1);
    if (qtype == Q8_0X) return gemv_x<Q8X>(p, M, K, w, y, N, n0, n1);
}

namespace {
// Walk rows n0..n1 of K values in groups of 4 blocks of 32 (a short last group):
// f(n, g, blocks, bb) for block bb of group g, which holds `blocks` blocks. The four row
// converters below differ only in what they do with one block.
template <class Fn>
void each_block(int64_t K, int64_t n0, int64_t n1, Fn f) {
    const int64_t nb = K / 32;
    for (int64_t n = n0; n < n1; n++)
        for (int64_t g = 0; g * 4 < nb; g++) {
            const int64_t blocks = nb - 4 * g < 4 ? nb - 4 * g : 4;
            for (int64_t bb = 0; bb < blocks; bb++) f(n, g, blocks, bb);
        }
}
}  // namespace

void dequant_q4x(const uint8_t *w, int64_t K, float *out, int64_t n0, int64_t n1) {
    const int64_t row_bytes = K / 32 * 20;
    const __m128i lo4 = _mm_set1_epi16(0x0F);
    each_block(K, n0, n1, [&](int64_t n, int64_t g, int64_t blocks, int64_t bb) {
        const uint8_t *words = w + n * row_bytes + GROUP_BYTES * g, *dp = words + 16 * blocks;
        // d * q + m rounded twice (a multiply, then an add: -ffp-contract=off), as gguf does
        const __m256 d = _mm256_set1_ps(fp16(dp + 2 * bb));
        const __m256 m = _mm256_set1_ps(fp16(dp + 2 * blocks + 2 * bb));
        const __m128i wv = load16(words + 16 * bb);  // words 8bb..8bb+7 of the group
        float *ob = out + n * K + 128 * g + 32 * bb;
        for (int j = 0; j < 4; j++) {  // nibble j of the 8 words: values 8j..8j+7
            const __m128i q = _mm_and_si128(_mm_srl_epi16(wv, _mm_cvtsi32_si128(4 * j)), lo4);
            const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(q));
            _mm256_storeu_ps(ob + 8 * j, _mm256_add_ps(_mm256_mul_ps(d, f), m));
        }
    });
}

// GGUF Q4_1 rows -> Q4_1x rows (the same bytes regrouped)
void q4x_from_q4_1(const uint8_t *src, int64_t K, uint8_t *dst, int64_t n0, int64_t n1) {
    const int64_t row_bytes = K / 32 * 20;
    each_block(K, n0, n1, [&](int64_t n, int64_t g, int64_t blocks, int64_t bb) {
        const uint8_t *blk = src + n * row_bytes + 20 * (4 * g + bb);
        uint8_t *words = dst + n * row_bytes + GROUP_BYTES * g, *dp = words + 16 * blocks;
        memcpy(dp + 2 * bb, blk, 2);                   // d
        memcpy(dp + 2 * blocks + 2 * bb, blk + 2, 2);  // m
        for (int w = 0; w < 8; w++) {
            uint16_t word = 0;
            for (int j = 0; j < 4; j++) {  // value 8j + w: GGUF keeps value i < 16 in the low
                const int i = 8 * j + w;   // nibble of byte i, i >= 16 in the high one
                const int q = i < 16 ? blk[4 + i] & 0xF : blk[4 + i - 16] >> 4;
                word |= (uint16_t)(q << (4 * j));
            }
            memcpy(words + 2 * (8 * bb + w), &word, 2);
        }
    });
}

void dequant_q8x(const uint8_t *w, int64_t K, float *out, int64_t n0, int64_t n1) {
    const int64_t row_bytes = K / 32 * 34;
    each_block(K, n0, n1, [&](int64_t n, int64_t g, int64_t blocks, int64_t bb) {
        const uint8_t *slabs = w + n * row_bytes + 136 * g, *dp = slabs + 32 * blocks;
        const __m256 d = _mm256_set1_ps(fp16(dp + 2 * bb));  // d * q, as gguf computes it
        float *ob = out + n * K + 128 * g + 32 * bb;
        for (int j = 0; j < 4; j++) {  // slab j, bytes 8bb..8bb+7: values 8j..8j+7
            const __m128i q = _mm_loadl_epi64((const __m128i *)(slabs + 8 * blocks * j + 8 * bb));
            _mm256_storeu_ps(ob + 8 * j, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q))));
        }
    });
}

// GGUF Q8_0 rows -> Q8_0x rows (the same bytes regrouped): per group of 4 blocks, slab j holds
// values 8j..8j+7 of each block in turn (8 bytes a block), then the blocks' d
void q8x_from_q8_0(const uint8_t *src, int64_t K, uint8_t *dst, int64_t n0, int64_t n1) {
    const int64_t row_bytes = K / 32 * 34;
    each_block(K, n0, n1, [&](int64_t n, int64_t g, int64_t blocks, int64_t bb) {
        const uint8_t *blk = src + n * row_bytes + 34 * (4 * g + bb);
        uint8_t *slabs = dst + n * row_bytes + 136 * g, *dp = slabs + 32 * blocks;
        memcpy(dp + 2 * bb, blk, 2);  // d
        for (int j = 0; j < 4; j++) memcpy(slabs + 8 * blocks * j + 8 * bb, blk + 2 + 8 * j, 8);
    });
}

}  // namespace hc
