// Plain C++ kernels (no torch headers: they compile in a second or two). Each computes the
// output rows n0..n1 of y (M, N) = x (M, K) @ w.T for its weight format; ops.cpp splits the
// rows across torch's threads. Legend: M input rows (1 when decoding), N outputs, K inputs.
#pragma once

#include <stdint.h>

namespace hc {

// ggml type codes of the packed formats (gguf.GGMLQuantizationType)
enum QType : int64_t { Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q6_K = 14,
                       // headcount's own: Q4_1 and Q8_0 regrouped for int16 dot products (x16.cpp)
                       Q4_1X = 1003, Q8_0X = 1008 };

// float32 / bfloat16 / int8 weights (N, K); scale (N,) multiplies each output (int8), or null
void gemv_f32(const float *x, int64_t M, int64_t K, const float *w, float *y, int64_t N,
              int64_t n0, int64_t n1);
void gemv_bf16(const float *x, int64_t M, int64_t K, const uint16_t *w, float *y, int64_t N,
               int64_t n0, int64_t n1);
void gemv_i8(const float *x, int64_t M, int64_t K, const int8_t *w, const float *scale,
             float *y, int64_t N, int64_t n0, int64_t n1);
// bfloat16 input and weights with AVX512-BF16 dot products; false when not compiled in
bool gemv_bf16_bf16(const uint16_t *x, int64_t M, int64_t K, const uint16_t *w, float *y,
                    int64_t N, int64_t n0, int64_t n1);

// packed GGUF rows: w (N, row_bytes) holds each row's blocks back to back, K % block == 0
bool qtype_known(int64_t qtype);
int64_t qtype_block(int64_t qtype);  // values per block (32 or 256)
int64_t qtype_bytes(int64_t qtype);  // bytes per block
void gemv_q(int64_t qtype, const float *x, int64_t M, int64_t K, const uint8_t *w, float *y,
            int64_t N, int64_t n0, int64_t n1);
// the same with int8 activations (Q4_0, Q4_1, Q8_0 only): x (M, K) rounded per 32 values by
// quantize_rows to xq with scales dx and exact sums xs (M, K/32)
bool qtype_int8_activations(int64_t qtype);
void quantize_rows(const float *x, int64_t M, int64_t K, int8_t *xq, float *dx, float *xs);
void gemv_q_a8(int64_t qtype, const int8_t *xq, const float *dx, const float *xs, int64_t M,
               int64_t K, const uint8_t *w, float *y, int64_t N, int64_t n0, int64_t n1);
// Q4_1x and Q8_0x (x16.cpp): the input rounded to int16 per 32 values once per call by
// x16_prepare (into the calling thread's buffer, valid until its next call), then any row range
// read by gemv_x16; dequant_q covers both; q4x_from_q4_1 / q8x_from_q8_0 regroup GGUF rows
const void *x16_prepare(const float *x, int64_t M, int64_t K);
void gemv_x16(int64_t qtype, const void *prepared, int64_t M, int64_t K, const uint8_t *w,
              float *y, int64_t N, int64_t n0, int64_t n1);
void dequant_q4x(const uint8_t *w, int64_t K, float *out, int64_t n0, int64_t n1);
void dequant_q8x(const uint8_t *w, int64_t K, float *out, int64_t n0, int64_t n1);
void q4x_from_q4_1(const uint8_t *src, int64_t K, uint8_t *dst, int64_t n0, int64_t n1);
void q8x_from_q8_0(const uint8_t *src, int64_t K, uint8_t *dst, int64_t n0, int64_t n1);
// RMSNorm of rows r0..r1 of x (rows, C) into y, times w (C,) unless null (norm.cpp)
void rms_norm_f32(const float *x, const float *w, float eps, int64_t C, float *y, int64_t r0,
                  int64_t r1);
void rms_norm_bf16(const uint16_t *x, const uint16_t *w, float eps, int64_t C, uint16_t *y,
                   int64_t r0, int64_t r1);
// One decode step of attention (attention.cpp) for units u0..u1 of (row b, KV head g), u = b*G + g:
// qkv (B, H + 2G, D) rows of [query heads | key heads | value heads] (strides in elements; the
// last dim contiguous); cos / ss (D) the position's RoPE cos and signed sin, or null for none;
// the caches (B, G, slots, D) get the new key and value at `slot`, and the first `held` slots are
// attended to; y (B, H, D) contiguous; query heads group_off[g] .. group_off[g+1]-1 use KV head g
struct AttnStep {
    int64_t H, G, D, qkv_b, qkv_h, c_b, c_g, c_s, slot, held;
    float scale;
    const int64_t *group_off;  // G + 1 offsets
};
void decode_attention_f32(const AttnStep &a, const float *qkv, const float *cos, const float *ss,
                          float *kc, float *vc, float *y, int64_t u0, int64_t u1);
void decode_attention_bf16(const AttnStep &a, const uint16_t *qkv, const uint16_t *cos,
                           const uint16_t *ss, uint16_t *kc, uint16_t *vc, uint16_t *y, int64_t u0,
                           int64_t u1);
// rows r0..r1 of x (rows, 2F) = [gate | up] -> y (rows, F) = silu(gate) * up (pointwise.cpp)
void silu_mul_f32(const float *x, int64_t F, float *y, int64_t r0, int64_t r1);
void silu_mul_bf16(const uint16_t *x, int64_t F, uint16_t *y, int64_t r0, int64_t r1);
// rows n0..n1 of w dequantised into out (N, K) float32, equal to gguf.quants.dequantize
void dequant_q(int64_t qtype, const uint8_t *w, int64_t K, float *out, int64_t n0, int64_t n1);

}  // namespace hc
