// RMSNorm of rows in one pass (headcount::rms_norm): y = w * (x * r) with
// r = 1 / sqrt(eps + |x|^2 / C), rounded as headcount.nn.RMSNorm's five torch ops round it
// (|x| as a float, its square, the product, then the weight's product; a bfloat16 row is widened,
// normalised in float32, rounded to bfloat16, then multiplied by the bfloat16 weight and rounded).
// On the decode path a norm is two rows of ops a layer fewer (5 dispatches -> 1).
#include <math.h>

#include "kernels.h"
#include "simd.h"

namespace hc {
namespace {

template <class T>
void rows(const T *x, const T *w, float eps, int64_t C, T *y, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; r++) {
        const T *xr = x + r * C;
        T *yr = y + r * C;
        float part[16] = {0};
        int64_t i = 0;
        for (; i + 16 <= C; i += 16)
            for (int l = 0; l < 16; l++) part[l] += to_f(xr[i + l]) * to_f(xr[i + l]);
        for (; i < C; i++) part[i % 16] += to_f(xr[i]) * to_f(xr[i]);
        float ss = 0.0f;
        for (int l = 0; l < 16; l++) ss += part[l];
        const float n = sqrtf(ss);
        const float inv = 1.0f / sqrtf(eps + (1.0f / (float)C) * n * n);
        for (int64_t c = 0; c < C; c++) {
            T h;
            put(&h, to_f(xr[c]) * inv);  // the normalised value in the input's dtype
            if (w)
                put(&yr[c], to_f(w[c]) * to_f(h));
            else
                yr[c] = h;
        }
    }
}

}  // namespace

void rms_norm_f32(const float *x, const float *w, float eps, int64_t C, float *y, int64_t r0,
                  int64_t r1) {
    rows<float>(x, w, eps, C, y, r0, r1);
}
void rms_norm_bf16(const uint16_t *x, const uint16_t *w, float eps, int64_t C, uint16_t *y,
                   int64_t r0, int64_t r1) {
    rows<uint16_t>(x, w, eps, C, y, r0, r1);
}

}  // namespace hc
