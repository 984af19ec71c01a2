/* One layer's attention for the engine's rows on a CPU, fused: rotary embedding of q and k, q scaled, k and v
 * stored into each row's cache, then each row's query against its cached positions 0..pos, in float32.
 *
 * Built and loaded by cpu_kernel.py (the engine's `cpu_kernel` setting). The arithmetic of a row depends on
 * that row's query and cache alone, in a fixed order (no reduction is split by how many rows there are),
 * so a position's result is the same whatever shares its call: the engine's row-by-row exactness holds with
 * it as with the torch path, each path with its own rounding.
 *
 * Layouts (the engine's): qkv (A, 3, H, D), contiguous; a cache chunk is (H, CHUNK * D) per row, its keys
 * transposed (D, CHUNK) and its values (CHUNK, D); `where` gives, per row, the address of its layer-0 keys'
 * chunk 0; in elements, the distance from keys to values, from one chunk to the next and from one layer to
 * the next; and what cpu_kernel.py checks the call against (chunks, layers, a chunk's size, an element's). Element type: float32, or bfloat16 (stored as uint16: loaded into float32, results rounded
 * to nearest even).
 */
#ifdef __AVX512F__
#include <immintrin.h>
#endif
#include <math.h>
#include <stdint.h>
#include <string.h>

#define CHUNK 32
#define WHERE 8  /* columns of a row's entry in `where` (cpu_kernel.where) */
#define LANES 16

typedef struct {
    const void *qkv;
    const int64_t *pos;
    const float *cos, *sin;
    const int64_t *where;
    void *out;
    int64_t layer, rows, heads, dim, stores;
    float scale;
    int bf16, own;  /* own: each row has a cache of its own, so it stores just before it attends */
} Job;

static inline float from_bf16(uint16_t b) {
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t to_bf16(float f) {  /* round to nearest even, as torch does */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

static inline float load(const void *base, int64_t i, int bf16) {
    return bf16 ? from_bf16(((const uint16_t *)base)[i]) : ((const float *)base)[i];
}

/* e^x for each x <= 0 of xs[0..n-1], in place (Cephes' expf: range reduction by ln 2, a degree-6
 * polynomial); rounding to an integer by adding 1.5 * 2^23, so the loop is plain arithmetic the compiler
 * vectorises. Below -87 it gives about 1e-38, never 0: callers zero what they mask. */
static void exp_nonpositive(float *xs, int64_t n) {
    for (int64_t j = 0; j < n; j++) {
        float x = xs[j] < -87.0f ? -87.0f : xs[j];
        float t = x * 1.44269504088896341f + 12582912.0f;
        float k = t - 12582912.0f;  /* x / ln 2, rounded to the nearest integer */
        float r = x - k * 0.693359375f;
        r = r - k * -2.12194440e-4f;
        float p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        float y = p * r * r + r + 1.0f;
        union { float f; int32_t i; } bits = {t}, scale;
        scale.i = (bits.i - 0x4B400000 + 127) << 23;  /* 2^k: t's low bits hold k */
        xs[j] = y * scale.f;
    }
}

/* x (D,) rotated in place at position p: x * cos + rotate_half(x) * sin, as model.apply_rope. */
static void rope(float *x, const float *cos, const float *sin, int64_t p, int64_t dim) {
    float t[dim];
    int64_t half = dim / 2;
    const float *c = cos + p * dim, *s = sin + p * dim;
    for (int64_t d = 0; d < half; d++) t[d] = x[d] * c[d] - x[d + half] * s[d];
    for (int64_t d = half; d < dim; d++) t[d] = x[d] * c[d] + x[d - half] * s[d];
    memcpy(x, t, sizeof(float) * dim);
}

static void store_rows(const Job *job, int64_t first, int64_t last) {
    const int64_t H = job->heads, D = job->dim;
    float k[D];
    for (int64_t r = first; r < last; r++) {
        const int64_t p = job->pos[r], *w = job->where + WHERE * r;
        const int64_t base = job->layer * w[3] + (p / CHUNK) * w[2], o = p % CHUNK;
        for (int64_t h = 0; h < H; h++) {
            const int64_t kin = ((r * 3 + 1) * H + h) * D, vin = ((r * 3 + 2) * H + h) * D;
            for (int64_t d = 0; d < D; d++) k[d] = load(job->qkv, kin + d, job->bf16);
            rope(k, job->cos, job->sin, p, D);
            const int64_t at = base + h * CHUNK * D;  /* this head's keys (D, CHUNK); its values w[1] later */
            if (job->bf16) {
                uint16_t *cache = (uint16_t *)(intptr_t)w[0];
                const uint16_t *v = (const uint16_t *)job->qkv + vin;
                for (int64_t d = 0; d < D; d++) cache[at + d * CHUNK + o] = to_bf16(k[d]);
                for (int64_t d = 0; d < D; d++) cache[at + w[1] + o * D + d] = v[d];
            } else {
                float *cache = (float *)(intptr_t)w[0];
                const float *v = (const float *)job->qkv + vin;
                for (int64_t d = 0; d < D; d++) cache[at + d * CHUNK + o] = k[d];
                for (int64_t d = 0; d < D; d++) cache[at + w[1] + o * D + d] = v[d];
            }
        }
    }
}

/* One chunk's scores for G heads at once, out[g][j] = sum over d of q[g][d] * keys[g][d][j] with d in order
 * (keys transposed, (dim, CHUNK) a head), and its values, acc[g][d] += sum over j < n of p[g][j] *
 * values[g][j][d] with j in order. For head sizes 16, 32 and 64, in vectors of 16 floats (GCC's vector
 * extensions: the CPU's widest registers, or several narrower ones) held in registers, the G heads' sums
 * independent chains the CPU overlaps, with their loads; for other head sizes, one float at a time. Each
 * head's sum is the same whatever else is computed beside it. */
typedef float v16 __attribute__((vector_size(64)));
typedef uint32_t u16x32 __attribute__((vector_size(64)));
typedef uint16_t h16 __attribute__((vector_size(32)));

static inline v16 load_f32(const void *p) {
    v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline v16 load_bf16(const void *p) {  /* 16 bfloat16 as float32: each one's bits, 16 places up */
#ifdef __AVX512F__
    return (v16)_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p)), 16));
#else
    h16 h;
    memcpy(&h, p, sizeof h);
    return (v16)(__builtin_convertvector(h, u16x32) << 16);
#endif
}

#define CHUNK_PRODUCTS(NAME, T, LOAD, DV)                                                                    \
    static void scores_##NAME(const void *from, const float *q, int64_t dim, float *out) {                 \
        const T *keys = from;                                                                               \
        v16 lo[4] = {{0}}, hi[4] = {{0}}; /* four partial sums, d mod 4: independent chains */              \
        for (int64_t d = 0; d < dim; d += 4) {                                                              \
            _Pragma("GCC unroll 4") for (int k = 0; k < 4; k++) {                                           \
                const v16 qd = (v16){0} + q[d + k];                                                         \
                lo[k] += qd * LOAD(keys + (d + k) * CHUNK);                                                 \
                hi[k] += qd * LOAD(keys + (d + k) * CHUNK + 16);                                            \
            }                                                                                               \
        }                                                                                                   \
        const v16 a = (lo[0] + lo[1]) + (lo[2] + lo[3]), b = (hi[0] + hi[1]) + (hi[2] + hi[3]);             \
        memcpy(out, &a, sizeof a);                                                                          \
        memcpy(out + 16, &b, sizeof b);                                                                     \
    }                                                                                                       \
    static void values_##NAME(const void *from, const float *p, int64_t n, int64_t dim, float *out) {      \
        const T *values = from;                                                                             \
        v16 acc[2][DV];  /* two partial sums, j mod 2 */                                                    \
        _Pragma("GCC unroll 4") for (int v = 0; v < (DV); v++) acc[0][v] = acc[1][v] = (v16){0};            \
        int64_t j = 0;                                                                                      \
        for (; j + 1 < n; j += 2) {                                                                         \
            _Pragma("GCC unroll 2") for (int k = 0; k < 2; k++) {                                           \
                const v16 pj = (v16){0} + p[j + k];                                                         \
                _Pragma("GCC unroll 4") for (int v = 0; v < (DV); v++)                                      \
                    acc[k][v] += pj * LOAD(values + (j + k) * dim + 16 * v);                                \
            }                                                                                               \
        }                                                                                                   \
        if (j < n) {                                                                                        \
            const v16 pj = (v16){0} + p[j];                                                                 \
            _Pragma("GCC unroll 4") for (int v = 0; v < (DV); v++) acc[0][v] += pj * LOAD(values + j * dim + 16 * v); \
        }                                                                                                   \
        _Pragma("GCC unroll 4") for (int v = 0; v < (DV); v++) {                                            \
            const v16 sum = load_f32(out + 16 * v) + (acc[0][v] + acc[1][v]);                               \
            memcpy(out + 16 * v, &sum, sizeof sum);                                                         \
        }                                                                                                   \
    }
/* any head size, one head, one float at a time */
#define SCALAR_PRODUCTS(NAME, T, LOAD)                                                                      \
    static void scores_##NAME(const void *from, const float *q, int64_t dim, float *out) {                 \
        const T *keys = from;                                                                               \
        float acc[CHUNK] = {0};                                                                             \
        for (int64_t d = 0; d < dim; d++)                                                                   \
            for (int j = 0; j < CHUNK; j++) acc[j] += q[d] * LOAD(keys[d * CHUNK + j]);                     \
        memcpy(out, acc, sizeof acc);                                                                       \
    }                                                                                                       \
    static void values_##NAME(const void *from, const float *p, int64_t n, int64_t dim, float *out) {      \
        const T *values = from;                                                                             \
        for (int64_t j = 0; j < n; j++)                                                                     \
            for (int64_t d = 0; d < dim; d++) out[d] += p[j] * LOAD(values[j * dim + d]);                   \
    }
#define AS_FLOAT(x) (x)
#define KINDS(NAME, T, LOAD)            \
    CHUNK_PRODUCTS(NAME##_16, T, LOAD, 1) \
    CHUNK_PRODUCTS(NAME##_32, T, LOAD, 2) \
    CHUNK_PRODUCTS(NAME##_64, T, LOAD, 4)
KINDS(f32, float, load_f32)
KINDS(bf16, uint16_t, load_bf16)
SCALAR_PRODUCTS(f32_any, float, AS_FLOAT)
SCALAR_PRODUCTS(bf16_any, uint16_t, from_bf16)

typedef void (*Scores)(const void *, const float *, int64_t, float *);
typedef void (*Values)(const void *, const float *, int64_t, int64_t, float *);
#define BY_SIZE(KIND, T) \
    (D == 16 ? KIND##_##T##_16 : D == 32 ? KIND##_##T##_32 : D == 64 ? KIND##_##T##_64 : KIND##_##T##_any)
#define PICK(KIND) (job->bf16 ? BY_SIZE(KIND, bf16) : BY_SIZE(KIND, f32))

static void attend_rows(const Job *job) {
    const int64_t H = job->heads, D = job->dim, item = job->bf16 ? 2 : 4;
    const Scores scores = PICK(scores);
    const Values values = PICK(values);
    float q[H * D], acc[H * D];
    for (int64_t r = 0; r < job->rows; r++) {
        const int64_t p = job->pos[r], n = p + 1, chunks = (n + CHUNK - 1) / CHUNK, *w = job->where + WHERE * r;
        const int64_t span = chunks * CHUNK, layer = job->layer * w[3];
        const char *cache = (const char *)(intptr_t)w[0];
        float s[H * span];
        if (job->own && r < job->stores) store_rows(job, r, r + 1);  /* the lines it writes, it reads next */
        for (int64_t h = 0; h < H; h++) {
            float *qh = q + h * D;
            for (int64_t d = 0; d < D; d++) qh[d] = load(job->qkv, (r * 3 * H + h) * D + d, job->bf16);
            rope(qh, job->cos, job->sin, p, D);
            for (int64_t d = 0; d < D; d++) qh[d] *= job->scale;
            for (int64_t c = 0; c < chunks; c++)
                scores(cache + (layer + c * w[2] + h * CHUNK * D) * item, qh, D, s + h * span + c * CHUNK);
        }
        for (int64_t h = 0; h < H; h++) {
            float *sh = s + h * span;
            for (int64_t j = n; j < span; j++) sh[j] = -INFINITY;  /* past the row's position: masked */
            float most[LANES];
            for (int l = 0; l < LANES; l++) most[l] = sh[l];
            for (int64_t j = LANES; j < span; j += LANES)
                for (int l = 0; l < LANES; l++) most[l] = sh[j + l] > most[l] ? sh[j + l] : most[l];
            float m = most[0];
            for (int l = 1; l < LANES; l++) m = most[l] > m ? most[l] : m;
            for (int64_t j = 0; j < n; j++) sh[j] -= m;
            exp_nonpositive(sh, n);
            for (int64_t j = n; j < span; j++) sh[j] = 0.0f;
        }
        for (int64_t i = 0; i < H * D; i++) acc[i] = 0.0f;
        for (int64_t h = 0; h < H; h++)
            for (int64_t c = 0; c < chunks; c++) {
                const int64_t len = n - c * CHUNK < CHUNK ? n - c * CHUNK : CHUNK;
                values(cache + (layer + c * w[2] + w[1] + h * CHUNK * D) * item, s + h * span + c * CHUNK, len, D,
                       acc + h * D);
            }
        for (int64_t h = 0; h < H; h++) {
            const float *sh = s + h * span;
            float part[LANES] = {0};
            for (int64_t j = 0; j < span; j += LANES)
                for (int l = 0; l < LANES; l++) part[l] += sh[j + l];
            float total = 0.0f;
            for (int l = 0; l < LANES; l++) total += part[l];
            const int64_t o = (r * H + h) * D;
            if (job->bf16)
                for (int64_t d = 0; d < D; d++) ((uint16_t *)job->out)[o + d] = to_bf16(acc[h * D + d] / total);
            else
                for (int64_t d = 0; d < D; d++) ((float *)job->out)[o + d] = acc[h * D + d] / total;
        }
    }
}

/* Store rows 0..stores-1, and attend rows 0..rows-1. Where rows share a cache (`own` 0: one sequence's
 * positions), every row stores before any row reads; where each has its own (`own` 1: decode), a row stores
 * just before it reads. One thread: with torch on two, a second thread here measured no faster (torch's
 * OpenMP workers keep the other core busy between their matmuls). */
void ts_attend(const void *qkv, const int64_t *pos, const float *cos, const float *sin, const int64_t *where,
               void *out, int64_t layer, int64_t rows, int64_t stores, int64_t heads, int64_t dim, float scale,
               int bf16, int own) {
    const Job job = {qkv, pos, cos, sin, where, out, layer, rows, heads, dim, stores, scale, bf16, own};
    if (!own) store_rows(&job, 0, stores);
    attend_rows(&job);
}
