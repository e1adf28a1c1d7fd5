// SwiGLU's gate (headcount::silu_mul): rows of [gate | up] (2F values) -> silu(gate) * up (F), as
// headcount.models.decoder.SwiGLU computes it in three torch ops (chunk, silu, mul): silu(g) =
// g / (1 + exp(-g)) rounded to the storage type, then the product rounded. One dispatch instead
// of three on the decode path.
#include <math.h>

#include "kernels.h"
#include "simd.h"

namespace hc {
namespace {

template <class T>
void rows(const T *x, int64_t F, T *y, int64_t r0, int64_t r1) {
    alignas(64) float s[16];
    for (int64_t r = r0; r < r1; r++) {
        const T *g = x + r * 2 * F, *u = g + F;
        T *yr = y + r * F;
        int64_t i = 0;
        for (; i + 16 <= F; i += 16) {  // silu of 16 in vectors (vexp), then the rounded product
            const V gv = vload_t(g + i);
            vstore(s, vdiv(gv, vadd(vset(1.0f), vexp(vsub(vzero(), gv)))));
            for (int l = 0; l < 16; l++) put(&yr[i + l], rnd(s[l], T()) * to_f(u[i + l]));
        }
        for (; i < F; i++) {
            const float gi = to_f(g[i]);
            put(&yr[i], rnd(gi / (1.0f + expf(-gi)), T()) * to_f(u[i]));
        }
    }
}

}  // namespace

void silu_mul_f32(const float *x, int64_t F, float *y, int64_t r0, int64_t r1) {
    rows<float>(x, F, y, r0, r1);
}
void silu_mul_bf16(const uint16_t *x, int64_t F, uint16_t *y, int64_t r0, int64_t r1) {
    rows<uint16_t>(x, F, y, r0, r1);
}

}  // namespace hc
