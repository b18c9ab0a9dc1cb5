/* ner-suite inference kernels for x86-64 CPUs with AVX2 and FMA, and wider register tiles
 * where the CPU has AVX-512 (compiled with -march=native on the machine that runs them).
 *
 * Everything works on packed tokens: rows of a [n_rows, width] row-major matrix, one row
 * per real token of a batch, no padding (the caller gathers them). Sequences are
 * contiguous runs of rows, given by their start offsets.
 *
 * Weights are block-sparse by output rows: blocks of 32 outputs x block_k inputs; a block
 * that is all zero is not stored and costs nothing. A dense matrix is the case where every
 * block is stored. Layout per output block-row nb: blocks row_ptr[nb] .. row_ptr[nb+1]-1,
 * block b covering inputs col_block[b]*block_k .. +block_k, its values packed
 *   fp32: [block_k][32]            (one 32-wide output vector per input)
 *   int8: [block_k/4][32][4]       (four consecutive inputs per output, the layout of a
 *                                   u8 x s8 dot product into one int32 lane)
 * 32 outputs rather than 16: each activation broadcast then feeds two zmm (four ymm)
 * multiply-adds, which halves the loads per multiply-add of the register tiles.
 *
 * int8 matrices hold symmetric per-output-row weights (scale w_scale[n]); activations are
 * quantised per row (token) at run time, symmetric, and stored as unsigned q + offset so
 * that the u8 x s8 instructions apply; the offset is removed with the weights' row sums.
 * Without VNNI the AVX2 path multiplies with vpmaddubsw, whose int16 pair sums saturate
 * above 32767: activations then use 63 levels (7 bits) so that 2 * 127 * 127 fits. The
 * linear layers can go one step further: weights packed at 63 levels too (w_levels <= 63) let
 * two vpmaddubsw results, 2 * 127 * 63 each, be added in int16 before one vpmaddwd widens
 * them, so 64 multiply-adds cost three multiply-unit instructions instead of four.
 *
 * Layer norm, GELU, softmax and residual adds stay in fp32.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__AVX2__) || !defined(__FMA__)
#error "ner-suite kernels need AVX2 and FMA"
#endif

#if defined(__AVXVNNI__)
#define NK_VNNI 1
#define dpbusd256(acc, u8, s8) _mm256_dpbusd_avx_epi32((acc), (u8), (s8))
#elif defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define NK_VNNI 1
#define dpbusd256(acc, u8, s8) _mm256_dpbusd_epi32((acc), (u8), (s8))
#else
#define NK_VNNI 0
#endif

/* With AVX-512 the 32 outputs of a block fill two zmm registers and a tile holds 12 rows. */
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define NK_AVX512 1
#else
#define NK_AVX512 0
#endif
#if NK_AVX512 && defined(__AVX512VNNI__)
#define NK_AVX512_VNNI 1
#else
#define NK_AVX512_VNNI 0
#endif

#define BO 32          /* outputs per block */
#define F32_ROWS_256 3 /* rows per register tile, by instruction set (see the tiles) */
#if NK_VNNI
#define I8_ROWS_256 3
#else
#define I8_ROWS_256 2
#endif
#define ROWS_512 12
#define MC 48 /* rows per task, a multiple of every tile's rows: they stay in cache while weights stream */
#define ATTENTION_ROWS 6 /* queries per register tile in attention */

enum { EPILOGUE_NONE = 0, EPILOGUE_GELU = 1, EPILOGUE_RESIDUAL = 2 };

/* Bit 0: AVX2+FMA kernels; bit 1: VNNI int8 dot products; bit 2: OpenMP threads;
 * bit 3: AVX-512 fp32 kernels; bit 4: AVX-512 VNNI int8 kernels. */
int nk_capabilities(void) {
    int flags = 1;
    if (NK_VNNI) flags |= 2;
    if (NK_AVX512) flags |= 8;
    if (NK_AVX512_VNNI) flags |= 16;
#ifdef _OPENMP
    flags |= 4;
#endif
    return flags;
}

/* Denormal floats (exp of very negative scores, products of tiny probabilities) take
 * micro-code assists that cost ~100 cycles each; nothing here needs them. Every parallel
 * region flushes them to zero on its threads and restores the caller's mode after, since
 * the threads are shared with PyTorch. */
#define FLUSH_DENORMALS_BEGIN const unsigned int saved_csr = _mm_getcsr(); _mm_setcsr(saved_csr | 0x8040);
#define FLUSH_DENORMALS_END _mm_setcsr(saved_csr);

/* Activation levels the int8 kernels expect (see the header comment). */
int nk_activation_levels(void) { return NK_VNNI ? 127 : 63; }
/* The int8 weight levels up to which the AVX2 tile sums pairs of products in int16 (the header). */
#define PAIRED_WEIGHT_LEVELS 63

/* ---- vector maths: exp and erf-GELU in fp32 ------------------------------------------- */

static inline __m256 exp256(__m256 x) {
    /* Cephes-style: 2^round(x/ln2) * polynomial on the remainder; relative error ~1e-7. */
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.3f));
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline __m256 gelu256(__m256 x) {
    /* 0.5 x (1 + erf(x / sqrt 2)), erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7),
     * the exact-erf GELU that BERT uses, not the tanh approximation. */
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    /* |x| / sqrt 2, capped at 6 where erf is 1 in fp32: exp(-z^2) then never leaves the normal range */
    __m256 z = _mm256_min_ps(_mm256_mul_ps(_mm256_andnot_ps(sign_bit, x), _mm256_set1_ps(0.70710678118654752f)), _mm256_set1_ps(6.0f));
    __m256 t = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_fmadd_ps(z, _mm256_set1_ps(0.3275911f), _mm256_set1_ps(1.0f)));
    __m256 p = _mm256_set1_ps(1.061405429f);
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
    p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
    p = _mm256_mul_ps(p, t);
    __m256 erf_abs = _mm256_fnmadd_ps(p, exp256(_mm256_mul_ps(_mm256_sub_ps(_mm256_setzero_ps(), z), z)), _mm256_set1_ps(1.0f));
    __m256 erf = _mm256_or_ps(erf_abs, _mm256_and_ps(sign_bit, x));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), x), _mm256_add_ps(_mm256_set1_ps(1.0f), erf));
}

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline float hmax256(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- vector maths for AVX-512 --------------------------------------------------------- */
#if NK_AVX512

static inline __m512 exp512(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.3f));
    __m512 fx = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(fx, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, fx); /* y * 2^fx in one instruction */
}

static inline __m512 gelu512(__m512 x) {
    /* the same erf approximation as gelu256 */
    __m512 z = _mm512_min_ps(_mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(0.70710678118654752f)), _mm512_set1_ps(6.0f));
    /* t = 1 / (1 + p z): a 14-bit reciprocal and one Newton step (~28 bits) cost less than a division */
    const __m512 denominator = _mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f));
    __m512 t = _mm512_rcp14_ps(denominator);
    t = _mm512_mul_ps(t, _mm512_fnmadd_ps(denominator, t, _mm512_set1_ps(2.0f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    p = _mm512_mul_ps(p, t);
    __m512 erf_abs = _mm512_fnmadd_ps(p, exp512(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), z)), _mm512_set1_ps(1.0f));
    __m512 erf = _mm512_or_ps(erf_abs, _mm512_and_ps(_mm512_set1_ps(-0.0f), x));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), x), _mm512_add_ps(_mm512_set1_ps(1.0f), erf));
}

#endif

/* ---- register tiles: rows x 32 outputs of one block-row ------------------------------
 * Rows past `rows` repeat the last row so the loops stay branch-free; their results are
 * dropped. Each tile adds the bias, then applies the epilogue (GELU or a residual add). */

static inline void store_row256(__m256 v[4], const float *bias, const float *residual, int epilogue, float *y) {
    for (int i = 0; i < 4; i++) {
        if (bias) v[i] = _mm256_add_ps(v[i], _mm256_loadu_ps(bias + 8 * i));
        if (epilogue == EPILOGUE_GELU)
            v[i] = gelu256(v[i]);
        else if (epilogue == EPILOGUE_RESIDUAL)
            v[i] = _mm256_add_ps(v[i], _mm256_loadu_ps(residual + 8 * i));
        _mm256_storeu_ps(y + 8 * i, v[i]);
    }
}

/* AVX2: 3 rows x 4 ymm = 12 accumulators + 3 broadcasts + 1 weight vector = 16 registers.
 * The accumulators are named variables, not an array: with an array, GCC stored all twelve
 * to the stack on every step of the inner loop (a tile 3x slower on Zen 3). */
__attribute__((unused)) static void tile_f32_256(const float *x, int64_t ldx, int rows, int32_t block_k,
                                                 const int32_t *cols, int32_t n_blocks, const float *values,
                                                 const float *bias, const float *residual, int64_t ldy, int epilogue, float *y) {
    const float *x0 = x, *x1 = x + (int64_t)(rows > 1 ? 1 : 0) * ldx, *x2 = x + (int64_t)(rows > 2 ? 2 : rows - 1) * ldx;
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c02 = c00, c03 = c00;
    __m256 c10 = c00, c11 = c00, c12 = c00, c13 = c00;
    __m256 c20 = c00, c21 = c00, c22 = c00, c23 = c00;
    for (int32_t b = 0; b < n_blocks; b++) {
        const float *w = values + (int64_t)b * block_k * BO;
        const int64_t k0 = (int64_t)cols[b] * block_k;
        for (int32_t k = 0; k < block_k; k++, w += BO) {
            const __m256 a0 = _mm256_broadcast_ss(x0 + k0 + k), a1 = _mm256_broadcast_ss(x1 + k0 + k),
                         a2 = _mm256_broadcast_ss(x2 + k0 + k);
            __m256 wv = _mm256_loadu_ps(w);
            c00 = _mm256_fmadd_ps(a0, wv, c00); c10 = _mm256_fmadd_ps(a1, wv, c10); c20 = _mm256_fmadd_ps(a2, wv, c20);
            wv = _mm256_loadu_ps(w + 8);
            c01 = _mm256_fmadd_ps(a0, wv, c01); c11 = _mm256_fmadd_ps(a1, wv, c11); c21 = _mm256_fmadd_ps(a2, wv, c21);
            wv = _mm256_loadu_ps(w + 16);
            c02 = _mm256_fmadd_ps(a0, wv, c02); c12 = _mm256_fmadd_ps(a1, wv, c12); c22 = _mm256_fmadd_ps(a2, wv, c22);
            wv = _mm256_loadu_ps(w + 24);
            c03 = _mm256_fmadd_ps(a0, wv, c03); c13 = _mm256_fmadd_ps(a1, wv, c13); c23 = _mm256_fmadd_ps(a2, wv, c23);
        }
    }
    __m256 v0[4] = {c00, c01, c02, c03}, v1[4] = {c10, c11, c12, c13}, v2[4] = {c20, c21, c22, c23};
    store_row256(v0, bias, residual, epilogue, y);
    if (rows > 1) store_row256(v1, bias, residual ? residual + ldy : NULL, epilogue, y + ldy);
    if (rows > 2) store_row256(v2, bias, residual ? residual + 2 * ldy : NULL, epilogue, y + 2 * ldy);
}

/* AVX2 int8: with VNNI 3 rows, as fp32; without, vpmaddubsw needs two more registers: 2 rows.
 * paired (no VNNI): the weights hold at most 63 levels, and two groups of 4 inputs are summed
 * in int16 before widening (the header); the caller guarantees the bound. */
static inline __attribute__((always_inline)) void tile_i8_256_body(
    const uint8_t *x, int64_t ldx, int rows, int32_t block_k, const int32_t *cols, int32_t n_blocks,
    const int8_t *values, const float *x_scale, const float *w_scale, const int32_t *w_offset_sum, const float *bias,
    const float *residual, int64_t ldy, int epilogue, float *y, const int paired) {
    const uint8_t *xr[I8_ROWS_256];
    for (int r = 0; r < I8_ROWS_256; r++) xr[r] = x + (int64_t)(r < rows ? r : rows - 1) * ldx;
    __m256i c[I8_ROWS_256][4];
    for (int r = 0; r < I8_ROWS_256; r++)
        for (int i = 0; i < 4; i++) c[r][i] = _mm256_setzero_si256();
#if !NK_VNNI
    const __m256i ones = _mm256_set1_epi16(1);
#endif
    for (int32_t b = 0; b < n_blocks; b++) {
        const int8_t *w = values + (int64_t)b * block_k * BO;
        const int64_t k0 = (int64_t)cols[b] * block_k;
        int32_t k = 0;
#if !NK_VNNI
        if (paired)
            for (; k + 8 <= block_k; k += 8, w += 8 * BO) {
                __m256i a[I8_ROWS_256], a2[I8_ROWS_256];
                for (int r = 0; r < I8_ROWS_256; r++) {
                    int32_t v[2];
                    memcpy(v, xr[r] + k0 + k, 8);
                    a[r] = _mm256_set1_epi32(v[0]);
                    a2[r] = _mm256_set1_epi32(v[1]);
                }
#pragma GCC unroll 4
                for (int i = 0; i < 4; i++) {
                    const __m256i w0 = _mm256_loadu_si256((const __m256i *)(w + 32 * i));
                    const __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + 4 * BO + 32 * i));
#pragma GCC unroll 3
                    for (int r = 0; r < I8_ROWS_256; r++) {
                        const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(a[r], w0), _mm256_maddubs_epi16(a2[r], w1));
                        c[r][i] = _mm256_add_epi32(c[r][i], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
#endif
        for (; k < block_k; k += 4, w += 4 * BO) {
            __m256i a[I8_ROWS_256];
            for (int r = 0; r < I8_ROWS_256; r++) {
                int32_t v;
                memcpy(&v, xr[r] + k0 + k, 4);
                a[r] = _mm256_set1_epi32(v);
            }
#pragma GCC unroll 4
            for (int i = 0; i < 4; i++) {
                const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + 32 * i));
#pragma GCC unroll 3
                for (int r = 0; r < I8_ROWS_256; r++) {
#if NK_VNNI
                    c[r][i] = dpbusd256(c[r][i], a[r], wv);
#else
                    c[r][i] = _mm256_add_epi32(c[r][i], _mm256_madd_epi16(_mm256_maddubs_epi16(a[r], wv), ones));
#endif
                }
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        const __m256 xs = _mm256_set1_ps(x_scale[r]);
        __m256 v[4];
        for (int i = 0; i < 4; i++) {
            const __m256i offset = _mm256_loadu_si256((const __m256i *)(w_offset_sum + 8 * i));
            v[i] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c[r][i], offset)),
                                 _mm256_mul_ps(xs, _mm256_loadu_ps(w_scale + 8 * i)));
        }
        store_row256(v, bias, residual ? residual + r * ldy : NULL, epilogue, y + r * ldy);
    }
}

/* Any int8 weights (attention's keys and values, the linear layers at 127 levels) ... */
__attribute__((unused)) static void tile_i8_256(const uint8_t *x, int64_t ldx, int rows, int32_t block_k,
                                                const int32_t *cols, int32_t n_blocks, const int8_t *values,
                                                const float *x_scale, const float *w_scale, const int32_t *w_offset_sum,
                                                const float *bias, const float *residual, int64_t ldy, int epilogue, float *y) {
    tile_i8_256_body(x, ldx, rows, block_k, cols, n_blocks, values, x_scale, w_scale, w_offset_sum, bias, residual, ldy,
                     epilogue, y, 0);
}

/* ... and weights within PAIRED_WEIGHT_LEVELS, two groups of 4 inputs at a time. */
__attribute__((unused)) static void tile_i8_256_pairs(const uint8_t *x, int64_t ldx, int rows, int32_t block_k,
                                                      const int32_t *cols, int32_t n_blocks, const int8_t *values,
                                                      const float *x_scale, const float *w_scale, const int32_t *w_offset_sum,
                                                      const float *bias, const float *residual, int64_t ldy, int epilogue, float *y) {
    tile_i8_256_body(x, ldx, rows, block_k, cols, n_blocks, values, x_scale, w_scale, w_offset_sum, bias, residual, ldy,
                     epilogue, y, 1);
}

#if NK_AVX512
static inline void store_row512(__m512 v[2], const float *bias, const float *residual, int epilogue, float *y) {
    for (int i = 0; i < 2; i++) {
        if (bias) v[i] = _mm512_add_ps(v[i], _mm512_loadu_ps(bias + 16 * i));
        if (epilogue == EPILOGUE_GELU)
            v[i] = gelu512(v[i]);
        else if (epilogue == EPILOGUE_RESIDUAL)
            v[i] = _mm512_add_ps(v[i], _mm512_loadu_ps(residual + 16 * i));
        _mm512_storeu_ps(y + 16 * i, v[i]);
    }
}

/* AVX-512: 12 rows x 2 zmm = 24 accumulators + 2 weight vectors + broadcasts <= 32 registers. */
static void tile_f32_512(const float *x, int64_t ldx, int rows, int32_t block_k, const int32_t *cols, int32_t n_blocks,
                         const float *values, const float *bias, const float *residual, int64_t ldy, int epilogue, float *y) {
    const float *xr[ROWS_512];
    for (int r = 0; r < ROWS_512; r++) xr[r] = x + (int64_t)(r < rows ? r : rows - 1) * ldx;
    __m512 c[ROWS_512][2];
    for (int r = 0; r < ROWS_512; r++) c[r][0] = c[r][1] = _mm512_setzero_ps();
    for (int32_t b = 0; b < n_blocks; b++) {
        const float *w = values + (int64_t)b * block_k * BO;
        const int64_t k0 = (int64_t)cols[b] * block_k;
        for (int32_t k = 0; k < block_k; k++, w += BO) {
            const __m512 w0 = _mm512_loadu_ps(w), w1 = _mm512_loadu_ps(w + 16);
#pragma GCC unroll 12
            for (int r = 0; r < ROWS_512; r++) {
                const __m512 a = _mm512_set1_ps(xr[r][k0 + k]);
                c[r][0] = _mm512_fmadd_ps(a, w0, c[r][0]);
                c[r][1] = _mm512_fmadd_ps(a, w1, c[r][1]);
            }
        }
    }
    for (int r = 0; r < rows; r++) store_row512(c[r], bias, residual ? residual + r * ldy : NULL, epilogue, y + r * ldy);
}
#endif

#if NK_AVX512_VNNI
static void tile_i8_512(const uint8_t *x, int64_t ldx, int rows, int32_t block_k, const int32_t *cols, int32_t n_blocks,
                        const int8_t *values, const float *x_scale, const float *w_scale, const int32_t *w_offset_sum,
                        const float *bias, const float *residual, int64_t ldy, int epilogue, float *y) {
    const uint8_t *xr[ROWS_512];
    for (int r = 0; r < ROWS_512; r++) xr[r] = x + (int64_t)(r < rows ? r : rows - 1) * ldx;
    __m512i c[ROWS_512][2];
    for (int r = 0; r < ROWS_512; r++) c[r][0] = c[r][1] = _mm512_setzero_si512();
    for (int32_t b = 0; b < n_blocks; b++) {
        const int8_t *w = values + (int64_t)b * block_k * BO;
        const int64_t k0 = (int64_t)cols[b] * block_k;
        for (int32_t k = 0; k < block_k; k += 4, w += 4 * BO) {
            const __m512i w0 = _mm512_loadu_si512((const void *)w), w1 = _mm512_loadu_si512((const void *)(w + 64));
#pragma GCC unroll 12
            for (int r = 0; r < ROWS_512; r++) {
                int32_t v;
                memcpy(&v, xr[r] + k0 + k, 4);
                const __m512i a = _mm512_set1_epi32(v);
                c[r][0] = _mm512_dpbusd_epi32(c[r][0], a, w0);
                c[r][1] = _mm512_dpbusd_epi32(c[r][1], a, w1);
            }
        }
    }
    for (int r = 0; r < rows; r++) {
        const __m512 xs = _mm512_set1_ps(x_scale[r]);
        __m512 v[2];
        for (int i = 0; i < 2; i++) {
            const __m512i offset = _mm512_loadu_si512((const void *)(w_offset_sum + 16 * i));
            v[i] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c[r][i], offset)),
                                 _mm512_mul_ps(xs, _mm512_loadu_ps(w_scale + 16 * i)));
        }
        store_row512(v, bias, residual ? residual + r * ldy : NULL, epilogue, y + r * ldy);
    }
}
#endif

/* The widest tiles compiled: what the drivers call. */
#if NK_AVX512
#define F32_TILE_ROWS ROWS_512
#define tile_f32 tile_f32_512
#else
#define F32_TILE_ROWS F32_ROWS_256
#define tile_f32 tile_f32_256
#endif
#if NK_AVX512_VNNI
#define I8_TILE_ROWS ROWS_512
#define tile_i8 tile_i8_512
#define tile_i8_pairs tile_i8_512
#else
#define I8_TILE_ROWS I8_ROWS_256
#define tile_i8 tile_i8_256
#define tile_i8_pairs tile_i8_256_pairs
#endif
typedef void (*tile_i8_fn)(const uint8_t *, int64_t, int, int32_t, const int32_t *, int32_t, const int8_t *,
                           const float *, const float *, const int32_t *, const float *, const float *, int64_t, int,
                           float *);
/* The int8 tile for weights of w_levels times activations of a_levels: products are paired in
 * int16 only when both are within PAIRED_WEIGHT_LEVELS (2 * 127 * 63 fits; 2 * 255 * 63 twice does not). */
static tile_i8_fn tile_i8_for(int32_t w_levels, int32_t a_levels) {
    return w_levels <= PAIRED_WEIGHT_LEVELS && a_levels <= PAIRED_WEIGHT_LEVELS ? tile_i8_pairs : tile_i8;
}

/* ---- block-sparse linear layers: fp32, and int8 with per-row activation quantisation -- */

void nk_linear_f32(const float *x, int64_t n_rows, int32_t n_in, int32_t n_out, int32_t block_k,
                   const int32_t *row_ptr, const int32_t *col_block, const float *values,
                   const float *bias, const float *residual, int32_t epilogue, float *y) {
    const int64_t n_chunks = (n_rows + MC - 1) / MC;
    const int32_t n_block_rows = n_out / BO;
#pragma omp parallel
    {
        FLUSH_DENORMALS_BEGIN
#pragma omp for collapse(2) schedule(static)
        for (int64_t chunk = 0; chunk < n_chunks; chunk++) {
            for (int32_t nb = 0; nb < n_block_rows; nb++) {
                const int32_t first = row_ptr[nb], n_blocks = row_ptr[nb + 1] - first;
                const int64_t end = (chunk + 1) * MC < n_rows ? (chunk + 1) * MC : n_rows;
                for (int64_t m = chunk * MC; m < end; m += F32_TILE_ROWS) {
                    const int rows = (int)(end - m < F32_TILE_ROWS ? end - m : F32_TILE_ROWS);
                    tile_f32(x + m * n_in, n_in, rows, block_k, col_block + first, n_blocks,
                             values + (int64_t)first * block_k * BO, bias ? bias + nb * BO : NULL,
                             residual ? residual + m * n_out + nb * BO : NULL, n_out, epilogue, y + m * n_out + nb * BO);
                }
            }
        }
        FLUSH_DENORMALS_END
    }
}

static void quantize_row(const float *row, int32_t n_in, int32_t levels, uint8_t *out, float *scale) {
    /* Symmetric: q = round(x * levels / max|x|) + levels + 1, in [1, 2 * levels + 1]. */
    __m256 vmax = _mm256_setzero_ps();
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    int32_t k = 0;
    for (; k + 8 <= n_in; k += 8) vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(row + k), abs_mask));
    float amax = hmax256(vmax);
    for (; k < n_in; k++) amax = fmaxf(amax, fabsf(row[k]));
    const float inv = amax > 0.0f ? (float)levels / amax : 0.0f;
    *scale = amax > 0.0f ? amax / (float)levels : 0.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    const __m256i offset = _mm256_set1_epi32(levels + 1);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    k = 0;
    for (; k + 32 <= n_in; k += 32) {
        /* cvtps rounds half to even (MXCSR default), as torch.round does. */
        __m256i a = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + k), vinv)), offset);
        __m256i b = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + k + 8), vinv)), offset);
        __m256i c = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + k + 16), vinv)), offset);
        __m256i d = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(row + k + 24), vinv)), offset);
        __m256i packed = _mm256_packus_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
        _mm256_storeu_si256((__m256i *)(out + k), _mm256_permutevar8x32_epi32(packed, order));
    }
    for (; k < n_in; k++) out[k] = (uint8_t)((int)nearbyintf(row[k] * inv) + levels + 1);
}

void nk_quantize_rows(const float *x, int64_t n_rows, int32_t n_in, int32_t levels, uint8_t *q, float *scale) {
#pragma omp parallel
    {
        FLUSH_DENORMALS_BEGIN
#pragma omp for schedule(static)
        for (int64_t m = 0; m < n_rows; m++) quantize_row(x + m * n_in, n_in, levels, q + m * n_in, scale + m);
        FLUSH_DENORMALS_END
    }
}

/* Static int8: every row on one fixed scale chosen ahead of time from calibration text
 * (q = clamp(round(x / scale), -levels, levels) + levels + 1): no pass to find each row's max. */
void nk_quantize_rows_static(const float *x, int64_t n_rows, int32_t n_in, int32_t levels, float scale, uint8_t *q,
                             float *row_scale) {
    const float inv = scale > 0.0f ? 1.0f / scale : 0.0f;
#pragma omp parallel
    {
        FLUSH_DENORMALS_BEGIN
        const __m256 vinv = _mm256_set1_ps(inv);
        const __m256 lo = _mm256_set1_ps((float)-levels), hi = _mm256_set1_ps((float)levels);
        const __m256i offset = _mm256_set1_epi32(levels + 1);
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
#pragma omp for schedule(static)
        for (int64_t m = 0; m < n_rows; m++) {
            const float *row = x + m * n_in;
            uint8_t *out = q + m * n_in;
            int32_t k = 0;
            for (; k + 32 <= n_in; k += 32) {
                __m256i v[4];
                for (int i = 0; i < 4; i++) {
                    /* clamped as floats (an integer bound rounds the same either side), then rounded */
                    __m256 r = _mm256_mul_ps(_mm256_loadu_ps(row + k + 8 * i), vinv);
                    v[i] = _mm256_add_epi32(_mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi)), offset);
                }
                __m256i packed = _mm256_packus_epi16(_mm256_packs_epi32(v[0], v[1]), _mm256_packs_epi32(v[2], v[3]));
                _mm256_storeu_si256((__m256i *)(out + k), _mm256_permutevar8x32_epi32(packed, order));
            }
            for (; k < n_in; k++) {
                float r = row[k] * inv;
                r = r < (float)-levels ? (float)-levels : (r > (float)levels ? (float)levels : r);
                out[k] = (uint8_t)((int)nearbyintf(r) + levels + 1);
            }
            row_scale[m] = scale;
        }
        FLUSH_DENORMALS_END
    }
}

/* w_offset_sum[n] = offset * sum_k w[n, k]: what the activations' offset adds to row n;
 * x_levels: the activations' levels (x_levels + 1 is that offset). */
void nk_linear_i8(const uint8_t *x, const float *x_scale, int32_t x_levels, int64_t n_rows, int32_t n_in, int32_t n_out,
                  int32_t block_k, const int32_t *row_ptr, const int32_t *col_block, const int8_t *values, int32_t w_levels,
                  const float *w_scale, const int32_t *w_offset_sum, const float *bias, const float *residual,
                  int32_t epilogue, float *y) {
    const tile_i8_fn tile = tile_i8_for(w_levels, x_levels);
    const int64_t n_chunks = (n_rows + MC - 1) / MC;
    const int32_t n_block_rows = n_out / BO;
#pragma omp parallel
    {
        FLUSH_DENORMALS_BEGIN
#pragma omp for collapse(2) schedule(static)
        for (int64_t chunk = 0; chunk < n_chunks; chunk++) {
            for (int32_t nb = 0; nb < n_block_rows; nb++) {
                const int32_t first = row_ptr[nb], n_blocks = row_ptr[nb + 1] - first;
                const int64_t end = (chunk + 1) * MC < n_rows ? (chunk + 1) * MC : n_rows;
                for (int64_t m = chunk * MC; m < end; m += I8_TILE_ROWS) {
                    const int rows = (int)(end - m < I8_TILE_ROWS ? end - m : I8_TILE_ROWS);
                    tile(x + m * n_in, n_in, rows, block_k, col_block + first, n_blocks,
                         values + (int64_t)first * block_k * BO, x_scale + m, w_scale + nb * BO,
                         w_offset_sum + nb * BO, bias ? bias + nb * BO : NULL,
                         residual ? residual + m * n_out + nb * BO : NULL, n_out, epilogue, y + m * n_out + nb * BO);
                }
            }
        }
        FLUSH_DENORMALS_END
    }
}

/* The same, with the output quantised for the next int8 layer instead of written as fp32:
 * a task computes whole output rows for MC tokens into a buffer that stays in cache, then
 * quantises each row (its max is known only once the row is complete). What leaves the
 * cache is 1 byte per output instead of 4, and the next layer reads no fp32 at all. */
int nk_linear_i8_quantized(const uint8_t *x, const float *x_scale, int64_t n_rows, int32_t n_in, int32_t n_out,
                           int32_t block_k, const int32_t *row_ptr, const int32_t *col_block, const int8_t *values,
                           int32_t w_levels, const float *w_scale, const int32_t *w_offset_sum, const float *bias, int32_t epilogue,
                           int32_t levels, uint8_t *y, float *y_scale) {
    const tile_i8_fn tile = tile_i8_for(w_levels, levels);
    const int64_t n_chunks = (n_rows + MC - 1) / MC;
    const int32_t n_block_rows = n_out / BO;
    int failed = 0;
#pragma omp parallel
    {
        FLUSH_DENORMALS_BEGIN
        float *rows_buffer = malloc(sizeof(float) * MC * n_out);
        if (!rows_buffer) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t chunk = 0; chunk < n_chunks; chunk++) {
            if (!rows_buffer) continue;
            const int64_t first_row = chunk * MC;
            const int rows_in_chunk = (int)(n_rows - first_row < MC ? n_rows - first_row : MC);
            for (int32_t nb = 0; nb < n_block_rows; nb++) {
                const int32_t first = row_ptr[nb], n_blocks = row_ptr[nb + 1] - first;
                for (int m = 0; m < rows_in_chunk; m += I8_TILE_ROWS) {
                    const int rows = rows_in_chunk - m < I8_TILE_ROWS ? rows_in_chunk - m : I8_TILE_ROWS;
                    tile(x + (first_row + m) * n_in, n_in, rows, block_k, col_block + first, n_blocks,
                            values + (int64_t)first * block_k * BO, x_scale + first_row + m, w_scale + nb * BO,
                            w_offset_sum + nb * BO, bias ? bias + nb * BO : NULL, NULL, n_out, epilogue,
                            rows_buffer + (int64_t)m * n_out + nb * BO);
                }
            }
            for (int r = 0; r < rows_in_chunk; r++)
                quantize_row(rows_buffer + (int64_t)r * n_out, n_out, levels, y + (first_row + r) * n_out,
                             y_scale + first_row + r);
        }
        free(rows_buffer);
        FLUSH_DENORMALS_END
    }
    return failed ? -1 : 0;
}

/* ---- layer norm (in place) ------------------------------------------------------------ */

void nk_layer_norm(float *x, int64_t n_rows, int32_t width, const float *gamma, const float *beta, float eps) {
#pragma omp parallel
    {
        FLUSH_DENORMALS_BEGIN
#pragma omp for schedule(static)
        for (int64_t m = 0; m < n_rows; m++) {
            float *row = x + m * width;
            __m256 s = _mm256_setzero_ps();
            int32_t k = 0;
            for (; k + 8 <= width; k += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(row + k));
            float sum = hsum256(s);
            for (; k < width; k++) sum += row[k];
            const float mean = sum / (float)width;
            const __m256 vmean = _mm256_set1_ps(mean);
            __m256 v = _mm256_setzero_ps();
            for (k = 0; k + 8 <= width; k += 8) {
                __m256 d = _mm256_sub_ps(_mm256_loadu_ps(row + k), vmean);
                v = _mm256_fmadd_ps(d, d, v);
            }
            float var = hsum256(v);
            for (; k < width; k++) var += (row[k] - mean) * (row[k] - mean);
            const float inv = 1.0f / sqrtf(var / (float)width + eps);
            const __m256 vinv = _mm256_set1_ps(inv);
            for (k = 0; k + 8 <= width; k += 8) {
                __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(row + k), vmean), vinv);
                _mm256_storeu_ps(row + k, _mm256_fmadd_ps(d, _mm256_loadu_ps(gamma + k), _mm256_loadu_ps(beta + k)));
            }
            for (; k < width; k++) row[k] = (row[k] - mean) * inv * gamma[k] + beta[k];
        }
        FLUSH_DENORMALS_END
    }
}

/* ---- GELU (in place), for when it cannot ride on a linear's epilogue ------------------ */

void nk_gelu(float *x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, gelu256(_mm256_loadu_ps(x + i)));
    for (; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

/* ---- self-attention inside each packed sequence (fp32) -------------------------------- */

/* exp(s[j] - max s) in place for j < length; returns their sum (the softmax's denominator). */
static float softmax_numerators256(float *s, int32_t length) {
    int32_t j = 0;
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (; j + 8 <= length; j += 8) vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(s + j));
    float smax = hmax256(vmax);
    for (; j < length; j++) smax = fmaxf(smax, s[j]);
    const __m256 m = _mm256_set1_ps(smax);
    __m256 vsum = _mm256_setzero_ps();
    for (j = 0; j + 8 <= length; j += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(s + j), m));
        _mm256_storeu_ps(s + j, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum256(vsum);
    for (; j < length; j++) {
        s[j] = expf(s[j] - smax);
        sum += s[j];
    }
    return sum;
}

/* The head's values, contiguous: rows of qkv are 3 x hidden floats apart, a stride that
 * maps them onto a few cache sets, so reading them in place misses L1 on every pass. */
static void pack_values(const float *qkv, int64_t ld, int32_t length, int32_t head_size, int64_t v_offset, float *values) {
    for (int32_t j = 0; j < length; j++) memcpy(values + (int64_t)j * head_size, qkv + j * ld + v_offset, sizeof(float) * head_size);
}

/* One (sequence, head): scores = q k^T / sqrt(d), softmax over keys, times v. Keys are
 * transposed once into kt[d][j] so that a tile of ATTENTION_ROWS queries x 16 keys is the same
 * register-blocked product as the linear layers; probabilities are normalised after P.V. */
static void attend_one(const float *qkv, int64_t ld, int32_t length, int32_t head_size, int64_t q_offset,
                       int64_t k_offset, int64_t v_offset, float *out, int64_t ld_out, float *kt, float *scores,
                       float *values) {
    const int32_t padded = (length + 15) & ~15;
    const float scale = 1.0f / sqrtf((float)head_size);
    for (int32_t d = 0; d < head_size; d++) {
        float *row = kt + (int64_t)d * padded;
        for (int32_t j = 0; j < length; j++) row[j] = qkv[j * ld + k_offset + d];
        for (int32_t j = length; j < padded; j++) row[j] = 0.0f;
    }
    pack_values(qkv, ld, length, head_size, v_offset, values);
    for (int32_t i0 = 0; i0 < length; i0 += ATTENTION_ROWS) {
        const int rows = length - i0 < ATTENTION_ROWS ? length - i0 : ATTENTION_ROWS;
        float q[ATTENTION_ROWS][256];
        for (int r = 0; r < ATTENTION_ROWS; r++) {
            const float *src = qkv + (int64_t)(i0 + (r < rows ? r : rows - 1)) * ld + q_offset;
            for (int32_t d = 0; d < head_size; d++) q[r][d] = src[d] * scale;
        }
        for (int32_t j = 0; j < padded; j += 16) {
            __m256 c[ATTENTION_ROWS][2];
            for (int r = 0; r < ATTENTION_ROWS; r++) c[r][0] = c[r][1] = _mm256_setzero_ps();
            for (int32_t d = 0; d < head_size; d++) {
                const __m256 k0 = _mm256_loadu_ps(kt + (int64_t)d * padded + j), k1 = _mm256_loadu_ps(kt + (int64_t)d * padded + j + 8);
#pragma GCC unroll 6
                for (int r = 0; r < ATTENTION_ROWS; r++) {
                    const __m256 a = _mm256_broadcast_ss(&q[r][d]);
                    c[r][0] = _mm256_fmadd_ps(a, k0, c[r][0]);
                    c[r][1] = _mm256_fmadd_ps(a, k1, c[r][1]);
                }
            }
            for (int r = 0; r < ATTENTION_ROWS; r++) {
                _mm256_storeu_ps(scores + r * padded + j, c[r][0]);
                _mm256_storeu_ps(scores + r * padded + j + 8, c[r][1]);
            }
        }
        float inverse_sum[ATTENTION_ROWS];
        for (int r = 0; r < rows; r++) inverse_sum[r] = 1.0f / softmax_numerators256(scores + r * padded, length);
        /* P.V, 16 dimensions (2 x 6 accumulators) at a time, then any 8 left over. */
        int32_t d = 0;
        for (; d + 16 <= head_size; d += 16) {
            __m256 acc[ATTENTION_ROWS][2];
            for (int r = 0; r < ATTENTION_ROWS; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
            for (int32_t j = 0; j < length; j++) {
                const float *v = values + (int64_t)j * head_size + d;
                const __m256 v0 = _mm256_loadu_ps(v), v1 = _mm256_loadu_ps(v + 8);
#pragma GCC unroll 6
                for (int r = 0; r < ATTENTION_ROWS; r++) {
                    const __m256 p = _mm256_broadcast_ss(scores + r * padded + j);
                    acc[r][0] = _mm256_fmadd_ps(p, v0, acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(p, v1, acc[r][1]);
                }
            }
            for (int r = 0; r < rows; r++) {
                const __m256 inverse = _mm256_set1_ps(inverse_sum[r]);
                _mm256_storeu_ps(out + (int64_t)(i0 + r) * ld_out + d, _mm256_mul_ps(acc[r][0], inverse));
                _mm256_storeu_ps(out + (int64_t)(i0 + r) * ld_out + d + 8, _mm256_mul_ps(acc[r][1], inverse));
            }
        }
        for (; d < head_size; d += 8) {
            __m256 acc[ATTENTION_ROWS];
            for (int r = 0; r < ATTENTION_ROWS; r++) acc[r] = _mm256_setzero_ps();
            for (int32_t j = 0; j < length; j++) {
                const __m256 v = _mm256_loadu_ps(values + (int64_t)j * head_size + d);
#pragma GCC unroll 6
                for (int r = 0; r < ATTENTION_ROWS; r++) acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(scores + r * padded + j), v, acc[r]);
            }
            for (int r = 0; r < rows; r++)
                _mm256_storeu_ps(out + (int64_t)(i0 + r) * ld_out + d, _mm256_mul_ps(acc[r], _mm256_set1_ps(inverse_sum[r])));
        }
    }
}

#if NK_AVX512
/* attend_one with zmm registers: tiles of 12 queries x 32 keys, then 12 queries x 32 (or
 * 16) value dimensions; head_size must be a multiple of 16. */
#define ATTENTION_ROWS_512 12
static void attend_one512(const float *qkv, int64_t ld, int32_t length, int32_t head_size, int64_t q_offset,
                          int64_t k_offset, int64_t v_offset, float *out, int64_t ld_out, float *kt, float *scores,
                       float *values) {
    const int32_t padded = (length + 31) & ~31;
    const float scale = 1.0f / sqrtf((float)head_size);
    for (int32_t j = 0; j < length; j++) {
        const float *key = qkv + (int64_t)j * ld + k_offset;
        for (int32_t d = 0; d < head_size; d++) kt[(int64_t)d * padded + j] = key[d];
    }
    for (int32_t d = 0; d < head_size; d++)
        for (int32_t j = length; j < padded; j++) kt[(int64_t)d * padded + j] = 0.0f;
    pack_values(qkv, ld, length, head_size, v_offset, values);
    for (int32_t i0 = 0; i0 < length; i0 += ATTENTION_ROWS_512) {
        const int rows = length - i0 < ATTENTION_ROWS_512 ? length - i0 : ATTENTION_ROWS_512;
        const float *q[ATTENTION_ROWS_512];
        for (int r = 0; r < ATTENTION_ROWS_512; r++) q[r] = qkv + (int64_t)(i0 + (r < rows ? r : rows - 1)) * ld + q_offset;
        for (int32_t j = 0; j < padded; j += 32) {
            __m512 c[ATTENTION_ROWS_512][2];
            for (int r = 0; r < ATTENTION_ROWS_512; r++) c[r][0] = c[r][1] = _mm512_setzero_ps();
            for (int32_t d = 0; d < head_size; d++) {
                const __m512 k0 = _mm512_loadu_ps(kt + (int64_t)d * padded + j), k1 = _mm512_loadu_ps(kt + (int64_t)d * padded + j + 16);
#pragma GCC unroll 12
                for (int r = 0; r < ATTENTION_ROWS_512; r++) {
                    const __m512 a = _mm512_set1_ps(q[r][d]);
                    c[r][0] = _mm512_fmadd_ps(a, k0, c[r][0]);
                    c[r][1] = _mm512_fmadd_ps(a, k1, c[r][1]);
                }
            }
            for (int r = 0; r < ATTENTION_ROWS_512; r++) {
                _mm512_storeu_ps(scores + r * padded + j, c[r][0]);
                _mm512_storeu_ps(scores + r * padded + j + 16, c[r][1]);
            }
        }
        float inverse_sum[ATTENTION_ROWS_512];
        for (int r = 0; r < rows; r++) {
            float *s = scores + r * padded;
            /* keys past the end are masked out of the max and the sum */
            const int32_t full = length & ~15;
            const __mmask16 tail = (__mmask16)((1u << (length - full)) - 1u);
            __m512 vmax = _mm512_set1_ps(-INFINITY);
            for (int32_t j = 0; j < full; j += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + j));
            if (tail) vmax = _mm512_mask_max_ps(vmax, tail, vmax, _mm512_loadu_ps(s + full));
            /* exp((s - max) / sqrt(d)): the query scale rides on the softmax's subtraction */
            const __m512 vscale = _mm512_set1_ps(scale), m = _mm512_set1_ps(_mm512_reduce_max_ps(vmax) * scale);
            __m512 vsum = _mm512_setzero_ps();
            for (int32_t j = 0; j < full; j += 16) {
                const __m512 e = exp512(_mm512_fmsub_ps(_mm512_loadu_ps(s + j), vscale, m));
                _mm512_storeu_ps(s + j, e);
                vsum = _mm512_add_ps(vsum, e);
            }
            if (tail) {
                const __m512 e = _mm512_maskz_mov_ps(tail, exp512(_mm512_fmsub_ps(_mm512_loadu_ps(s + full), vscale, m)));
                _mm512_storeu_ps(s + full, e);
                vsum = _mm512_add_ps(vsum, e);
            }
            inverse_sum[r] = 1.0f / _mm512_reduce_add_ps(vsum);
        }
        int32_t d = 0;
        for (; d + 32 <= head_size; d += 32) {
            __m512 acc[ATTENTION_ROWS_512][2];
            for (int r = 0; r < ATTENTION_ROWS_512; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
            for (int32_t j = 0; j < length; j++) {
                const float *v = values + (int64_t)j * head_size + d;
                const __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
#pragma GCC unroll 12
                for (int r = 0; r < ATTENTION_ROWS_512; r++) {
                    const __m512 p = _mm512_set1_ps(scores[r * padded + j]);
                    acc[r][0] = _mm512_fmadd_ps(p, v0, acc[r][0]);
                    acc[r][1] = _mm512_fmadd_ps(p, v1, acc[r][1]);
                }
            }
            for (int r = 0; r < rows; r++) {
                const __m512 inverse = _mm512_set1_ps(inverse_sum[r]);
                _mm512_storeu_ps(out + (int64_t)(i0 + r) * ld_out + d, _mm512_mul_ps(acc[r][0], inverse));
                _mm512_storeu_ps(out + (int64_t)(i0 + r) * ld_out + d + 16, _mm512_mul_ps(acc[r][1], inverse));
            }
        }
        if (d < head_size) { /* 16 dimensions left */
            __m512 acc[ATTENTION_ROWS_512];
            for (int r = 0; r < ATTENTION_ROWS_512; r++) acc[r] = _mm512_setzero_ps();
            for (int32_t j = 0; j < length; j++) {
                const __m512 v = _mm512_loadu_ps(values + (int64_t)j * head_size + d);
#pragma GCC unroll 12
                for (int r = 0; r < ATTENTION_ROWS_512; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(scores[r * padded + j]), v, acc[r]);
            }
            for (int r = 0; r < rows; r++)
                _mm512_storeu_ps(out + (int64_t)(i0 + r) * ld_out + d, _mm512_mul_ps(acc[r], _mm512_set1_ps(inverse_sum[r])));
        }
    }
}
#endif

/* ---- self-attention in int8: the linear layers' int8 tile for both products ----------- */

#define ATTENTION_I8_STRIP 12 /* queries whose scores are held at once: a multiple of every int8 tile's rows */

typedef struct {
    int8_t *keys, *values_t;  /* keys as the "weights" of 32-key block-rows; values transposed the same way */
    float *key_scale, *value_scale, *query_scale, *scores, *probability_scale;
    int32_t *key_offset, *zeros;
    uint8_t *queries, *probabilities;
} attention_i8_buffers;

/* One (sequence, head). Keys: 127 levels per key; queries: the kernels' activation levels per
 * query (scale x 1/sqrt(d)); scores by tile_i8 with keys as the weights; softmax in fp32; each
 * probability row to 127 unsigned levels of its largest value (1 after the subtraction);
 * values transposed, 127 levels per head dimension; P.V by tile_i8 with the values as the
 * weights. keys32/keys4: the length rounded up to 32 and to 4. head_size a multiple of 32. */
static void attend_one_i8(const float *qkv, int64_t ld, int32_t length, int32_t head_size, int32_t levels,
                          int64_t q_offset, int64_t k_offset, int64_t v_offset, float *out, int64_t ld_out,
                          int32_t keys32, int32_t keys4, const attention_i8_buffers *b) {
    const int32_t zero_col = 0;
    const float scale = 1.0f / sqrtf((float)head_size);
    for (int32_t j = 0; j < keys32; j++) {
        int8_t *block = b->keys + (int64_t)(j / 32) * 32 * head_size;
        if (j >= length) {
            for (int32_t d = 0; d < head_size; d++) block[(d / 4) * 128 + (j % 32) * 4 + d % 4] = 0;
            b->key_scale[j] = 0.0f;
            b->key_offset[j] = 0;
            continue;
        }
        const float *key = qkv + (int64_t)j * ld + k_offset;
        __m256 vmax = _mm256_setzero_ps();
        for (int32_t d = 0; d < head_size; d += 8)
            vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(key + d), _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))));
        const float amax = hmax256(vmax);
        const float inverse = amax > 0.0f ? 127.0f / amax : 0.0f;
        int32_t sum = 0;
        for (int32_t d = 0; d < head_size; d++) {
            const int32_t v = (int32_t)nearbyintf(key[d] * inverse);
            block[(d / 4) * 128 + (j % 32) * 4 + d % 4] = (int8_t)v;
            sum += v;
        }
        b->key_scale[j] = amax / 127.0f;
        b->key_offset[j] = (levels + 1) * sum;
    }
    for (int32_t i = 0; i < length; i++) {
        quantize_row(qkv + (int64_t)i * ld + q_offset, head_size, levels, b->queries + (int64_t)i * head_size, b->query_scale + i);
        b->query_scale[i] *= scale;
    }
    /* values: each dimension's largest magnitude over the keys (rows read in order), then the
     * transposed int8 blocks */
    float *inverse = b->value_scale + head_size; /* scratch beside the scales */
    for (int32_t d = 0; d < head_size; d++) b->value_scale[d] = 0.0f;
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    for (int32_t j = 0; j < length; j++) {
        const float *value = qkv + (int64_t)j * ld + v_offset;
        for (int32_t d = 0; d < head_size; d += 8)
            _mm256_storeu_ps(b->value_scale + d, _mm256_max_ps(_mm256_loadu_ps(b->value_scale + d),
                                                               _mm256_and_ps(_mm256_loadu_ps(value + d), abs_mask)));
    }
    for (int32_t d = 0; d < head_size; d++) {
        inverse[d] = b->value_scale[d] > 0.0f ? 127.0f / b->value_scale[d] : 0.0f;
        b->value_scale[d] /= 127.0f;
    }
    for (int32_t j = 0; j < keys4; j++) {
        const float *value = qkv + (int64_t)j * ld + v_offset;
        for (int32_t d = 0; d < head_size; d++)
            b->values_t[(int64_t)(d / 32) * keys4 * 32 + (j / 4) * 128 + (d % 32) * 4 + j % 4] =
                j < length ? (int8_t)nearbyintf(value[d] * inverse[d]) : 0;
    }
    for (int32_t i0 = 0; i0 < length; i0 += ATTENTION_I8_STRIP) {
        const int32_t strip = length - i0 < ATTENTION_I8_STRIP ? length - i0 : ATTENTION_I8_STRIP;
        for (int32_t m = 0; m < strip; m += I8_TILE_ROWS) {
            const int rows = strip - m < I8_TILE_ROWS ? strip - m : I8_TILE_ROWS;
            for (int32_t nb = 0; nb < keys32 / 32; nb++)
                tile_i8(b->queries + (int64_t)(i0 + m) * head_size, head_size, rows, head_size, &zero_col, 1,
                        b->keys + (int64_t)nb * 32 * head_size, b->query_scale + i0 + m, b->key_scale + nb * 32,
                        b->key_offset + nb * 32, NULL, NULL, keys32, EPILOGUE_NONE, b->scores + (int64_t)m * keys32 + nb * 32);
        }
        for (int32_t r = 0; r < strip; r++) {
            float *s = b->scores + (int64_t)r * keys32;
            uint8_t *p = b->probabilities + (int64_t)r * keys4;
            const float sum = softmax_numerators256(s, length);
            int32_t j;
            const __m256 levels127 = _mm256_set1_ps(127.0f);
            for (j = 0; j + 8 <= length; j += 8) {
                const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(s + j), levels127));
                const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
                _mm_storel_epi64((__m128i *)(p + j), _mm_packus_epi16(words, words));
            }
            for (; j < length; j++) p[j] = (uint8_t)nearbyintf(s[j] * 127.0f);
            for (; j < keys4; j++) p[j] = 0;
            b->probability_scale[r] = 1.0f / (127.0f * sum);
        }
        for (int32_t m = 0; m < strip; m += I8_TILE_ROWS) {
            const int rows = strip - m < I8_TILE_ROWS ? strip - m : I8_TILE_ROWS;
            for (int32_t nb = 0; nb < head_size / 32; nb++)
                tile_i8(b->probabilities + (int64_t)m * keys4, keys4, rows, keys4, &zero_col, 1,
                        b->values_t + (int64_t)nb * keys4 * 32, b->probability_scale + m, b->value_scale + nb * 32,
                        b->zeros, NULL, NULL, ld_out, EPILOGUE_NONE, out + (int64_t)(i0 + m) * ld_out + nb * 32);
        }
    }
}

static void attention_i8_buffers_free(attention_i8_buffers *b) {
    free(b->keys); free(b->values_t); free(b->key_scale); free(b->key_offset); free(b->value_scale); free(b->zeros);
    free(b->queries); free(b->query_scale); free(b->scores); free(b->probabilities); free(b->probability_scale);
}

/* Buffers for sequences of up to keys32 tokens (a multiple of 32, at least 32); 0 when memory runs out. */
static int attention_i8_buffers_init(attention_i8_buffers *b, int32_t keys32, int32_t head_size) {
    b->keys = malloc((size_t)keys32 * head_size);
    b->values_t = malloc((size_t)keys32 * head_size);
    b->key_scale = malloc(sizeof(float) * keys32);
    b->key_offset = malloc(sizeof(int32_t) * keys32);
    b->value_scale = malloc(sizeof(float) * 2 * head_size);
    b->zeros = calloc((size_t)head_size, sizeof(int32_t));
    b->queries = malloc((size_t)keys32 * head_size);
    b->query_scale = malloc(sizeof(float) * keys32);
    b->scores = malloc(sizeof(float) * ATTENTION_I8_STRIP * keys32);
    b->probabilities = malloc((size_t)ATTENTION_I8_STRIP * keys32);
    b->probability_scale = malloc(sizeof(float) * ATTENTION_I8_STRIP);
    return b->keys && b->values_t && b->key_scale && b->key_offset && b->value_scale && b->zeros && b->queries &&
           b->query_scale && b->scores && b->probabilities && b->probability_scale;
}

/* Every (sequence, head) of a packed batch, one task each: fp32 (int8_levels 0) or int8 with
 * the queries on int8_levels. qkv: (n_tokens, 3 * n_heads * head_size), queries | keys |
 * values; starts: n_seqs + 1 row offsets. */
static int attention_all(const float *qkv, const int64_t *starts, int32_t n_seqs, int32_t n_heads, int32_t head_size,
                         int32_t int8_levels, float *out) {
    const int64_t hidden = (int64_t)n_heads * head_size, ld = 3 * hidden;
    int64_t longest = 0;
    for (int32_t s = 0; s < n_seqs; s++) longest = starts[s + 1] - starts[s] > longest ? starts[s + 1] - starts[s] : longest;
    const int64_t padded = longest > 32 ? (longest + 31) & ~31 : 32;
    /* fp32: keys transposed, a tile's scores, values packed */
    const int64_t fp32_scratch = head_size * padded + 16 * padded + head_size * padded;
    int failed = 0;
#pragma omp parallel
    {
        FLUSH_DENORMALS_BEGIN
        float *kt = NULL;
        attention_i8_buffers b = {0};
        const int ok = int8_levels ? attention_i8_buffers_init(&b, (int32_t)padded, head_size)
                                   : (kt = malloc(sizeof(float) * fp32_scratch)) != NULL;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int32_t s = 0; s < n_seqs; s++) {
            for (int32_t h = 0; h < n_heads; h++) {
                const int64_t first = starts[s];
                const int32_t length = (int32_t)(starts[s + 1] - first);
                if (!ok || length == 0) continue;
                const float *base = qkv + first * ld;
                float *target = out + first * hidden + h * head_size;
                const int64_t q_offset = h * head_size, k_offset = hidden + h * head_size, v_offset = 2 * hidden + h * head_size;
                if (int8_levels)
                    attend_one_i8(base, ld, length, head_size, int8_levels, q_offset, k_offset, v_offset, target, hidden,
                                  (length + 31) & ~31, (length + 3) & ~3, &b);
#if NK_AVX512
                else if (head_size % 16 == 0)
                    attend_one512(base, ld, length, head_size, q_offset, k_offset, v_offset, target, hidden, kt,
                                  kt + head_size * padded, kt + (head_size + 16) * padded);
#endif
                else
                    attend_one(base, ld, length, head_size, q_offset, k_offset, v_offset, target, hidden, kt,
                               kt + head_size * padded, kt + (head_size + 16) * padded);
            }
        }
        free(kt);
        attention_i8_buffers_free(&b);
        FLUSH_DENORMALS_END
    }
    return failed ? -1 : 0;
}

/* fp32 self-attention inside each packed sequence. head_size must be a multiple of 8, at most
 * 256. Returns 0, or -1 when the shapes are outside what this kernel handles (the caller then
 * uses the reference). */
int nk_attention(const float *qkv, const int64_t *starts, int32_t n_seqs, int32_t n_heads, int32_t head_size, float *out) {
    if (head_size % 8 || head_size > 256) return -1;
    return attention_all(qkv, starts, n_seqs, n_heads, head_size, 0, out);
}

/* As nk_attention, in int8 (attend_one_i8); levels: the queries' activation levels.
 * head_size must be a multiple of 32, at most 256; returns -1 otherwise (or when memory runs out). */
int nk_attention_i8(const float *qkv, const int64_t *starts, int32_t n_seqs, int32_t n_heads, int32_t head_size,
                    int32_t levels, float *out) {
    if (head_size % 32 || head_size > 256 || levels <= 0) return -1;
    return attention_all(qkv, starts, n_seqs, n_heads, head_size, levels, out);
}

/* ---- the span head, fused over tiles of spans ----------------------------------------- */

/* A block-sparse matrix as one argument (fp32 or int8; see the header comment). */
typedef struct {
    int32_t n_out, n_in, block_k, is_int8, levels; /* levels: int8 weights' (tile_i8_for) */
    const int32_t *row_ptr, *col_block;
    const void *values;
    const float *scale;          /* int8: per output row */
    const int32_t *offset_sum;   /* int8: (levels + 1) * row sums */
    const float *bias;           /* may be NULL */
} nk_matrix;

/* y[rows, n_out] = epilogue(x[rows, n_in] . w^T + bias) for rows <= MC, single-threaded;
 * an int8 matrix reads the quantised rows (xq, xs), an fp32 one the float rows (xf). */
static void tile_matrix(const nk_matrix *w, const float *xf, const uint8_t *xq, const float *xs, int32_t x_levels,
                        int rows, int epilogue, float *y) {
    for (int32_t nb = 0; nb < w->n_out / BO; nb++) {
        const int32_t first = w->row_ptr[nb], n_blocks = w->row_ptr[nb + 1] - first;
        const float *bias = w->bias ? w->bias + nb * BO : NULL;
        const int step = w->is_int8 ? I8_TILE_ROWS : F32_TILE_ROWS;
        for (int m = 0; m < rows; m += step) {
            const int tile_rows = rows - m < step ? rows - m : step;
            float *out = y + (int64_t)m * w->n_out + nb * BO;
            if (w->is_int8)
                tile_i8_for(w->levels, x_levels)(xq + (int64_t)m * w->n_in, w->n_in, tile_rows, w->block_k, w->col_block + first, n_blocks,
                        (const int8_t *)w->values + (int64_t)first * w->block_k * BO, xs + m, w->scale + nb * BO,
                        w->offset_sum + nb * BO, bias, NULL, w->n_out, epilogue, out);
            else
                tile_f32(xf + (int64_t)m * w->n_in, w->n_in, tile_rows, w->block_k, w->col_block + first, n_blocks,
                         (const float *)w->values + (int64_t)first * w->block_k * BO, bias, NULL, w->n_out, epilogue, out);
        }
    }
}

/* logits[b, i, w, :] = classify_out(gelu(classify_in(gelu(start[b, i] + end[b, min(i + w, n - 1)] + width[w]))))
 * for every word i of every sequence b and every width w < max_width: the span head's
 * (batch, words, max_width, hidden) activations only ever exist one tile of MC spans at a
 * time, in cache. start and end: (n_batch * n_words) rows of hidden values, ld apart
 * (they may interleave in one matrix), biases included. */
int nk_span_head(const float *start, const float *end, int64_t ld, int64_t n_batch, int32_t n_words, const float *width,
                 int32_t max_width, const nk_matrix *classify_in, const nk_matrix *classify_out, int32_t levels,
                 float *logits) {
    const int32_t hidden = classify_in->n_in, inner = classify_in->n_out;
    if (hidden % 8 || inner != classify_out->n_in) return -1;
    const int64_t n_spans = n_batch * n_words * max_width, n_chunks = (n_spans + MC - 1) / MC;
    int failed = 0;
#pragma omp parallel
    {
        FLUSH_DENORMALS_BEGIN
        const int32_t widest = hidden > inner ? hidden : inner;
        float *h0 = malloc(sizeof(float) * MC * hidden), *h1 = malloc(sizeof(float) * MC * inner);
        uint8_t *q = malloc((size_t)MC * widest);
        float *qs = malloc(sizeof(float) * MC);
        if (!h0 || !h1 || !q || !qs) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t chunk = 0; chunk < n_chunks; chunk++) {
            if (!h0 || !h1 || !q || !qs) continue;
            const int64_t r0 = chunk * MC;
            const int rows = (int)(n_spans - r0 < MC ? n_spans - r0 : MC);
            for (int t = 0; t < rows; t++) {
                const int64_t r = r0 + t, word = r / max_width;
                const int32_t w = (int32_t)(r % max_width), i = (int32_t)(word % n_words);
                const int64_t last = word - i + (i + w < n_words ? i + w : n_words - 1);
                const float *s = start + word * ld, *e = end + last * ld, *wv = width + (int64_t)w * hidden;
                for (int32_t k = 0; k < hidden; k += 8) {
                    __m256 v = _mm256_add_ps(_mm256_add_ps(_mm256_loadu_ps(s + k), _mm256_loadu_ps(e + k)), _mm256_loadu_ps(wv + k));
                    _mm256_storeu_ps(h0 + (int64_t)t * hidden + k, gelu256(v));
                }
            }
            if (classify_in->is_int8)
                for (int t = 0; t < rows; t++) quantize_row(h0 + (int64_t)t * hidden, hidden, levels, q + (int64_t)t * hidden, qs + t);
            tile_matrix(classify_in, h0, q, qs, levels, rows, EPILOGUE_GELU, h1);
            if (classify_out->is_int8)
                for (int t = 0; t < rows; t++) quantize_row(h1 + (int64_t)t * inner, inner, levels, q + (int64_t)t * inner, qs + t);
            tile_matrix(classify_out, h1, q, qs, levels, rows, EPILOGUE_NONE, logits + r0 * classify_out->n_out);
        }
        free(h0);
        free(h1);
        free(q);
        free(qs);
        FLUSH_DENORMALS_END
    }
    return failed ? -1 : 0;
}
