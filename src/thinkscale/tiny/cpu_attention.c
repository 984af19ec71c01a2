/* One layer's attention for the engine's rows on a CPU, fused: rotary embedding of q and k, q scaled, k and v
 * stored into each row's cache, then each row's query against its cached positions 0..pos, in float32.
 *
 * Built and loaded by cpu_kernel.py (the engine's `cpu_kernel` setting). The arithmetic of a row depends on
 * that row's query and cache alone, in a fixed order (no reduction is split by how many rows there are),
 * so a position's result is the same whatever shares its call: the engine's row-by-row exactness holds with
 * it as with the torch path, each path with its own rounding.
 *
 * Layouts: qkv (A, 3, H, D), contiguous; a cache chunk is (H, CHUNK * D) per row, its keys and its values
 * each (CHUNK, D) a head, position-major. (The torch path keeps its keys transposed, (D, CHUNK); an engine
 * keeps its cache in the layout of the path it uses. Position-major, a row reads only the lines of its own
 * positions, and a prompt's positions can be read from the prompt's one cache: `lead`.) `where` gives, per
 * row, the address of its layer-0 keys' chunk 0; in elements, the distance from keys to values, from one
 * chunk to the next and from one layer to the next; and what cpu_kernel.py checks the call against (chunks,
 * layers, a chunk's size, an element's). Element type: float32, or bfloat16 (stored as uint16: loaded into
 * float32, results rounded to nearest even).
 *
 * Below ts_attend, the rest of a layer between its matmuls (ts_add_rms, ts_silu_mul), row by row alike.
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
    const int64_t *lead, *lead_where;  /* or NULL: each row's first positions, read from its prompt's cache */
    int64_t first, last;  /* the rows this thread attends */
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
            const int64_t at = base + (h * CHUNK + o) * D;  /* this position's key (D,); its value w[1] later */
            if (job->bf16) {
                uint16_t *cache = (uint16_t *)(intptr_t)w[0];
                const uint16_t *v = (const uint16_t *)job->qkv + vin;
                for (int64_t d = 0; d < D; d++) cache[at + d] = to_bf16(k[d]);
                memcpy(cache + at + w[1], v, sizeof(uint16_t) * D);
            } else {
                float *cache = (float *)(intptr_t)w[0];
                const float *v = (const float *)job->qkv + vin;
                memcpy(cache + at, k, sizeof(float) * D);
                memcpy(cache + at + w[1], v, sizeof(float) * D);
            }
        }
    }
}

/* A head's products over a run of consecutive positions, each position's key and value a (dim,) vector
 * (position-major, keys as values). scores: out[j] = sum over d of q[d] * keys[j][d], in vectors of 16 floats
 * (GCC's vector extensions: the CPU's widest registers, or several narrower ones), then the vector's lanes
 * summed; values: acc[j mod 2][v] += p[j] * values[j][16v..16v+15], the two partial sums carried by the
 * caller across runs, so that where a row's positions are cut into runs (chunks, or its prompt's positions
 * read from the prompt's own cache) changes no bit of its result. For head sizes 16, 32 and 64; other head
 * sizes go one float at a time (SCALAR_PRODUCTS). */
typedef float v16 __attribute__((vector_size(64)));
typedef uint32_t u16x32 __attribute__((vector_size(64)));
typedef uint16_t h16 __attribute__((vector_size(32)));
/* Prefetching (prefetch_head): the next row's lines, into L2, a head's keys as the row before starts that
 * head's scores and its values as that one starts the head's value sums. Measured on a Zen 4 (1,024 rows,
 * bfloat16, a layer's call): 1.8 ms, against 3.0 ms without, 3.0 ms into L1 (it thrashes) and 1.9-2.0 ms two
 * or three rows ahead, all the next row's lines asked for at once (stop 38). Asked for at once, they
 * overflowed the core's queue of misses, and the core waited on the prefetches themselves; spread over the
 * heads (stop 40), a row whose cache is in memory took 1.36-1.43 us against 1.86-1.98 us
 * (benchmarks/profile_kernel.py). */
#define AHEAD 1
#define PREFETCH_LOCALITY 2
#define MAX_DV 4 /* vectors of 16 a head (head size 64) */

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

/* The lane sums of 16 vectors, sums[i] = the sum of x[i]'s 16 lanes, by halving: lanes l and l + 8 added,
 * then l and l + 4, l and l + 2, l and l + 1, for every vector alike, so a sum does not depend on which of
 * the 16 places its vector took (or on what the other places held). */
#if defined(__has_builtin)
#if __has_builtin(__builtin_shufflevector)
#define HAVE_SHUFFLEVECTOR 1
#endif
#endif
static inline v16 lane_sums(const v16 x[16]) {
#if defined(HAVE_SHUFFLEVECTOR) && !defined(TS_NO_SHUFFLEVECTOR)
#define HALVES(a, b, ...) (__builtin_shufflevector(a, b, __VA_ARGS__))
#else /* GCC before 12: its own builtin, the lanes given as a vector */
#define HALVES(a, b, ...) (__builtin_shuffle(a, b, (u16x32){__VA_ARGS__}))
#endif
    v16 t[8], u[4], w[2];
    for (int i = 0; i < 8; i++)
        t[i] = HALVES(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23)
               + HALVES(x[2 * i], x[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    for (int i = 0; i < 4; i++)
        u[i] = HALVES(t[2 * i], t[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27)
               + HALVES(t[2 * i], t[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    for (int i = 0; i < 2; i++)
        w[i] = HALVES(u[2 * i], u[2 * i + 1], 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29)
               + HALVES(u[2 * i], u[2 * i + 1], 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
    return HALVES(w[0], w[1], 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
           + HALVES(w[0], w[1], 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
#undef HALVES
}

/* out[0..m-1] = the first m of v's lanes (m <= 16): one masked store where the CPU has AVX-512 (memcpy of a
 * size known only at run time is a `rep movs`, slow to start) */
static inline void store_lanes(float *out, v16 v, int64_t m) {
#ifdef __AVX512F__
    _mm512_mask_storeu_ps(out, (__mmask16)((1u << m) - 1u), (__m512)v);
#else
    memcpy(out, &v, sizeof(float) * m);
#endif
}

/* scores_NAME: out[j] = the score of position j < count, 16 positions at a time, each position's products in
 * a vector (LANES_FN: the 16 lanes sum to its score), then the 16 vectors' lanes summed (lane_sums). */
#define SCORES(NAME, LANES_FN, QV)                                                                            \
    static void scores_##NAME(const void *from, const float *q, int64_t count, int64_t dim, float *out) {  \
        v16 qv[2 * MAX_DV];                                                                                 \
        QV(qv, q);                                                                                          \
        for (int64_t j0 = 0; j0 < count; j0 += 16) {                                                        \
            const int64_t m = count - j0 < 16 ? count - j0 : 16;                                            \
            v16 x[16];                                                                                      \
            for (int64_t i = 0; i < 16; i++) x[i] = i < m ? LANES_FN(from, (j0 + i) * dim, qv) : (v16){0};  \
            const v16 sums = lane_sums(x);                                                                  \
            store_lanes(out + j0, sums, m);                                                                 \
        }                                                                                                   \
    }
#define RUN_PRODUCTS(NAME, T, LOAD, DV)                                                                      \
    static inline void q_##NAME(v16 *qv, const float *q) {                                                  \
        _Pragma("GCC unroll 4") for (int v = 0; v < (DV); v++) qv[v] = load_f32(q + 16 * v);                \
    }                                                                                                       \
    static inline v16 lanes_##NAME(const void *from, int64_t at, const v16 *qv) {                           \
        const T *k = (const T *)from + at;                                                                  \
        v16 x = qv[0] * LOAD(k);                                                                            \
        _Pragma("GCC unroll 4") for (int v = 1; v < (DV); v++) x += qv[v] * LOAD(k + 16 * v);               \
        return x;                                                                                           \
    }                                                                                                       \
    SCORES(NAME, lanes_##NAME, q_##NAME)                                                                    \
    static void values_##NAME(const void *from, const float *p, int64_t first, int64_t count, int64_t dim, \
                              v16 acc[2][MAX_DV]) {                                                         \
        const T *values = from;                                                                             \
        v16 even[DV], odd[DV]; /* positions' partial sums by parity, in registers */                        \
        _Pragma("GCC unroll 4") for (int v = 0; v < (DV); v++) even[v] = acc[0][v], odd[v] = acc[1][v];     \
        int64_t j = 0;                                                                                      \
        if ((first & 1) && count) {                                                                         \
            _Pragma("GCC unroll 4") for (int v = 0; v < (DV); v++) odd[v] += p[0] * LOAD(values + 16 * v);  \
            j = 1;                                                                                          \
        }                                                                                                   \
        for (; j + 1 < count; j += 2) {                                                                     \
            const v16 pe = (v16){0} + p[j], po = (v16){0} + p[j + 1];                                       \
            _Pragma("GCC unroll 4") for (int v = 0; v < (DV); v++) {                                        \
                even[v] += pe * LOAD(values + j * dim + 16 * v);                                            \
                odd[v] += po * LOAD(values + (j + 1) * dim + 16 * v);                                       \
            }                                                                                               \
        }                                                                                                   \
        if (j < count) {                                                                                    \
            const v16 pe = (v16){0} + p[j];                                                                 \
            _Pragma("GCC unroll 4") for (int v = 0; v < (DV); v++) even[v] += pe * LOAD(values + j * dim + 16 * v); \
        }                                                                                                   \
        _Pragma("GCC unroll 4") for (int v = 0; v < (DV); v++) acc[0][v] = even[v], acc[1][v] = odd[v];     \
    }
/* any head size, one float at a time: acc's floats, in order, are the head's (dim,) sums */
#define SCALAR_PRODUCTS(NAME, T, LOAD)                                                                      \
    static void scores_##NAME(const void *from, const float *q, int64_t count, int64_t dim, float *out) {  \
        const T *keys = from;                                                                               \
        for (int64_t j = 0; j < count; j++) {                                                               \
            float sum = 0.0f;                                                                               \
            for (int64_t d = 0; d < dim; d++) sum += q[d] * LOAD(keys[j * dim + d]);                        \
            out[j] = sum;                                                                                   \
        }                                                                                                   \
    }                                                                                                       \
    static void values_##NAME(const void *from, const float *p, int64_t first, int64_t count, int64_t dim, \
                              v16 acc[2][MAX_DV]) {                                                         \
        const T *values = from;                                                                             \
        float *into = (float *)acc[0];                                                                      \
        (void)first;                                                                                        \
        for (int64_t j = 0; j < count; j++)                                                                 \
            for (int64_t d = 0; d < dim; d++) into[d] += p[j] * LOAD(values[j * dim + d]);                  \
    }
/* bfloat16 heads of 32 or 64 (SPLIT_PRODUCTS): a 64-byte line of 32 bfloat16 read as two float32 vectors with
 * no widening shuffle, its even elements (each 32-bit word shifted up 16 bits) and its odd ones (each word's
 * high half), so a line costs a load and two one-cycle operations. A query is split alike; a position's score
 * sums, lane l, q[2l] k[2l] + q[2l+1] k[2l+1] over the head's lines, then the lanes as above. The value sums
 * are kept split too, acc[parity][2v] the even dimensions of line v and acc[parity][2v + 1] the odd ones
 * (`unsplit`): each dimension's sum is the same as RUN_PRODUCTS' to the bit, only in other lanes. */
typedef uint32_t u32x16 __attribute__((vector_size(64)));
static inline void split_bf16(const void *p, v16 *even, v16 *odd) {
    u32x16 w;
    memcpy(&w, p, sizeof w);
    *even = (v16)(w << 16);
    *odd = (v16)(w & 0xffff0000u);
}
#define SPLIT_ADD(into, j, LINES)                                                                                  \
    do {                                                                                                     \
        const v16 pj = (v16){0} + p[j];                                                                      \
        _Pragma("GCC unroll 2") for (int v = 0; v < (LINES); v++) {                                          \
            v16 ve, vo;                                                                                      \
            split_bf16(values + (j) * dim + 32 * v, &ve, &vo);                                               \
            into[2 * v] += pj * ve;                                                                          \
            into[2 * v + 1] += pj * vo;                                                                      \
        }                                                                                                    \
    } while (0)
#define SPLIT_PRODUCTS(NAME, LINES)                                                                          \
    static inline void q_##NAME(v16 *qv, const float *q) { /* qv[2v]: line v's even elements, [2v+1] odd */ \
        for (int v = 0; v < (LINES); v++)                                                                   \
            for (int l = 0; l < 16; l++) qv[2 * v][l] = q[32 * v + 2 * l], qv[2 * v + 1][l] = q[32 * v + 2 * l + 1]; \
    }                                                                                                       \
    static inline v16 lanes_##NAME(const void *from, int64_t at, const v16 *qv) {                           \
        const uint16_t *k = (const uint16_t *)from + at;                                                    \
        v16 ke, ko;                                                                                         \
        split_bf16(k, &ke, &ko);                                                                            \
        v16 x = qv[0] * ke + qv[1] * ko;                                                                    \
        _Pragma("GCC unroll 2") for (int v = 1; v < (LINES); v++) {                                         \
            split_bf16(k + 32 * v, &ke, &ko);                                                               \
            x += qv[2 * v] * ke;                                                                            \
            x += qv[2 * v + 1] * ko;                                                                        \
        }                                                                                                   \
        return x;                                                                                           \
    }                                                                                                       \
    SCORES(NAME, lanes_##NAME, q_##NAME)                                                                    \
    static void values_##NAME(const void *from, const float *p, int64_t first, int64_t count, int64_t dim, \
                              v16 acc[2][MAX_DV]) {                                                         \
        const uint16_t *values = from;                                                                      \
        v16 even[2 * (LINES)], odd[2 * (LINES)]; /* by position parity; [2v] even dimensions, [2v+1] odd */ \
        _Pragma("GCC unroll 4") for (int v = 0; v < 2 * (LINES); v++) even[v] = acc[0][v], odd[v] = acc[1][v]; \
        int64_t j = 0;                                                                                      \
        if ((first & 1) && count) {                                                                         \
            SPLIT_ADD(odd, 0, LINES);                                                                              \
            j = 1;                                                                                          \
        }                                                                                                   \
        for (; j + 1 < count; j += 2) {                                                                     \
            SPLIT_ADD(even, j, LINES);                                                                             \
            SPLIT_ADD(odd, j + 1, LINES);                                                                          \
        }                                                                                                   \
        if (j < count) SPLIT_ADD(even, j, LINES);                                                                  \
        _Pragma("GCC unroll 4") for (int v = 0; v < 2 * (LINES); v++) acc[0][v] = even[v], acc[1][v] = odd[v]; \
    }
#define AS_FLOAT(x) (x)
#define KINDS(NAME, T, LOAD)          \
    RUN_PRODUCTS(NAME##_16, T, LOAD, 1) \
    RUN_PRODUCTS(NAME##_32, T, LOAD, 2) \
    RUN_PRODUCTS(NAME##_64, T, LOAD, 4)
KINDS(f32, float, load_f32)
RUN_PRODUCTS(bf16_16, uint16_t, load_bf16, 1)
SPLIT_PRODUCTS(bf16_32, 1)
SPLIT_PRODUCTS(bf16_64, 2)
SCALAR_PRODUCTS(f32_any, float, AS_FLOAT)
SCALAR_PRODUCTS(bf16_any, uint16_t, from_bf16)

typedef void (*Scores)(const void *, const float *, int64_t, int64_t, float *);
typedef void (*Values)(const void *, const float *, int64_t, int64_t, int64_t, v16 (*)[MAX_DV]);
#define BY_SIZE(KIND, T) \
    (D == 16 ? KIND##_##T##_16 : D == 32 ? KIND##_##T##_32 : D == 64 ? KIND##_##T##_64 : KIND##_##T##_any)
#define PICK(KIND) (job->bf16 ? BY_SIZE(KIND, bf16) : BY_SIZE(KIND, f32))

/* Where position j of head h of a layer lies, in the cache a `where` entry describes (bytes). */
static inline const char *at(const int64_t *w, int64_t layer, int64_t h, int64_t j, int64_t dim, int64_t item) {
    return (const char *)(intptr_t)w[0] + (layer * w[3] + (j / CHUNK) * w[2] + (h * CHUNK + j % CHUNK) * dim) * item;
}

/* The end of the run of positions from j on that lie together: within j's chunk, and on j's side of the
 * row's prompt (read from the prompt's cache, `lead` positions). */
static inline int64_t run_end(int64_t j, int64_t n, int64_t lead) {
    int64_t stop = (j / CHUNK + 1) * CHUNK;
    if (stop > n) stop = n;
    if (j < lead && lead < stop) stop = lead;
    return stop;
}

/* Ask the CPU for the cache lines row r will read from its own cache for head h (its keys, or its values, past
 * its lead), so that they arrive while the row before it computes: its positions lie in short runs in memory,
 * too short for the CPU's own prefetchers, which wait for a run before they fetch ahead. */
static void prefetch_head(const Job *job, int64_t r, int64_t h, int values) {
    const int64_t D = job->dim, item = job->bf16 ? 2 : 4, bytes = D * item, n = job->pos[r] + 1;
    const int64_t lead = job->lead ? job->lead[r] : 0, *w = job->where + WHERE * r;
    for (int64_t j = lead, stop; j < n; j = stop) {  /* not the lead: the rows of a prompt share it, at hand */
        stop = run_end(j, n, lead);
        const char *lines = at(w, job->layer, h, j, D, item) + (values ? w[1] * item : 0);
        for (int64_t b = 0; b < (stop - j) * bytes; b += 64) __builtin_prefetch(lines + b, 0, PREFETCH_LOCALITY);
    }
}

static void attend_rows(const Job *job) {
    const int64_t H = job->heads, D = job->dim, item = job->bf16 ? 2 : 4;
    const Scores scores = PICK(scores);
    const Values values = PICK(values);
    const int64_t DV = D == 16 || D == 32 || D == 64 ? D / 16 : 0;  /* 0: SCALAR_PRODUCTS (head size <= 128) */
    float q[H * D];
    for (int64_t r = job->first; r < job->last; r++) {
        const int64_t p = job->pos[r], n = p + 1, *w = job->where + WHERE * r;
        const int64_t lead = job->lead ? job->lead[r] : 0, *lw = job->lead ? job->lead_where + WHERE * r : w;
        const int64_t span = (n + LANES - 1) / LANES * LANES;
        float s[H * span];
        if (job->own && r < job->stores) store_rows(job, r, r + 1);  /* the lines it writes, it reads next */
        for (int64_t h = 0; h < H; h++) {
            float *qh = q + h * D, *sh = s + h * span;
            if (r + AHEAD < job->last) prefetch_head(job, r + AHEAD, h, 0);
            for (int64_t d = 0; d < D; d++) qh[d] = load(job->qkv, (r * 3 * H + h) * D + d, job->bf16);
            rope(qh, job->cos, job->sin, p, D);
            for (int64_t d = 0; d < D; d++) qh[d] *= job->scale;
            for (int64_t j = 0, stop; j < n; j = stop) {
                stop = run_end(j, n, lead);
                scores(at(j < lead ? lw : w, job->layer, h, j, D, item), qh, stop - j, D, sh + j);
            }
            for (int64_t j = n; j < span; j++) sh[j] = -INFINITY;  /* lanes past the row's position */
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
        for (int64_t h = 0; h < H; h++) {
            const float *sh = s + h * span;
            if (r + AHEAD < job->last) prefetch_head(job, r + AHEAD, h, 1);
            v16 acc[2][MAX_DV];
            memset(acc, 0, sizeof acc);
            float head[D];
            for (int64_t j = 0, stop; j < n; j = stop) {
                stop = run_end(j, n, lead);
                const int64_t *src = j < lead ? lw : w;
                values(at(src, job->layer, h, j, D, item) + src[1] * item, sh + j, j, stop - j, D, acc);
            }
            if (DV && job->bf16 && DV > 1) {  /* SPLIT_PRODUCTS': even and odd dimensions apart */
                for (int64_t v = 0; v < DV / 2; v++) {
                    const v16 e = acc[0][2 * v] + acc[1][2 * v], o = acc[0][2 * v + 1] + acc[1][2 * v + 1];
                    for (int l = 0; l < 16; l++) head[32 * v + 2 * l] = e[l], head[32 * v + 2 * l + 1] = o[l];
                }
            } else if (DV) {
                for (int64_t v = 0; v < DV; v++) {
                    const v16 sum = acc[0][v] + acc[1][v];
                    memcpy(head + 16 * v, &sum, sizeof sum);
                }
            } else {
                memcpy(head, acc, sizeof(float) * D);
            }
            float part[LANES] = {0};
            for (int64_t j = 0; j < span; j += LANES)
                for (int l = 0; l < LANES; l++) part[l] += sh[j + l];
            float total = 0.0f;
            for (int l = 0; l < LANES; l++) total += part[l];
            const int64_t o = (r * H + h) * D;
            if (job->bf16)
                for (int64_t d = 0; d < D; d++) ((uint16_t *)job->out)[o + d] = to_bf16(head[d] / total);
            else
                for (int64_t d = 0; d < D; d++) ((float *)job->out)[o + d] = head[d] / total;
        }
    }
}

/* Store rows 0..stores-1, and attend rows 0..rows-1. Where rows share a cache (`own` 0: one sequence's
 * positions), every row stores before any row reads; where each has its own (`own` 1: decode), a row stores
 * just before it reads. `lead` (or NULL): per row, how many of its first positions to read from the cache
 * `lead_where` describes (its prompt's, which many rows share, and which stays in the CPU's caches while they
 * read it) instead of its own copy: the same keys and values, so the same result. The rows that attend are
 * split among `threads` threads by OpenMP (one, in a build without it), each a block of at least 32 consecutive
 * rows. Built by GCC with -fopenmp, this library takes the libgomp that torch has loaded, so the threads are
 * torch's own pool (cpu_kernel.parallel() checks that the process has one OpenMP runtime),
 * still spinning from its last matmul; threads of our own (pthreads, stop 37) fought those for the cores and
 * measured no faster. Returns the threads used. */
int ts_attend(const void *qkv, const int64_t *pos, const float *cos, const float *sin, const int64_t *where,
              void *out, int64_t layer, int64_t rows, int64_t stores, int64_t heads, int64_t dim, float scale,
              int bf16, int own, const int64_t *lead, const int64_t *lead_where, int threads) {
    const Job job = {qkv, pos, cos, sin, where, out, layer, rows, heads, dim, stores, scale, bf16, own, lead,
                     lead_where, 0, rows};
    if (!own) store_rows(&job, 0, stores);
    if (threads > rows / 32) threads = (int)(rows / 32);
    if (threads < 2) {
        attend_rows(&job);
        return 1;
    }
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; t++) {
        Job part = job;
        part.first = rows * t / threads;
        part.last = rows * (t + 1) / threads;
        attend_rows(&part);
    }
    return threads;
#else
    attend_rows(&job);
    return 1;
#endif
}

/* The rest of a layer's work besides its matmuls and attention, for the same engine rows, each row's
 * arithmetic its own in a fixed order (so row-by-row exactness holds here too). */

/* x (rows, h) float32, in place: x += delta (rows, h), float32 or bfloat16 (NULL: nothing added); then out (rows,
 * h) = w * (x / sqrt(mean of x^2 + eps)), the torch path's RMS norm (`Engine._rms`), as float32 or rounded to
 * bfloat16 for the next matmul. The squares are summed in 16 partial sums (lane l: the columns l mod 16), then
 * those in a fixed order. */
void ts_add_rms(float *x, const void *delta, int delta_bf16, const float *w, float eps, void *out, int out_bf16,
                int64_t rows, int64_t h, int threads) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows >= 64)
#endif
    for (int64_t r = 0; r < rows; r++) {
        float *xr = x + r * h;
        if (delta) {
            if (delta_bf16) {
                const uint16_t *d = (const uint16_t *)delta + r * h;
                for (int64_t j = 0; j < h; j++) xr[j] += from_bf16(d[j]);
            } else {
                const float *d = (const float *)delta + r * h;
                for (int64_t j = 0; j < h; j++) xr[j] += d[j];
            }
        }
        float part[LANES] = {0};
        int64_t j = 0;
        for (; j + LANES <= h; j += LANES)
            for (int l = 0; l < LANES; l++) part[l] += xr[j + l] * xr[j + l];
        for (int l = 0; j < h; j++, l++) part[l] += xr[j] * xr[j];
        float sum = 0.0f;
        for (int l = 0; l < LANES; l++) sum += part[l];
        const float scale = 1.0f / sqrtf(sum / (float)h + eps);
        if (out_bf16) {
            uint16_t *o = (uint16_t *)out + r * h;
            for (int64_t k = 0; k < h; k++) o[k] = to_bf16(w[k] * (xr[k] * scale));
        } else {
            float *o = (float *)out + r * h;
            for (int64_t k = 0; k < h; k++) o[k] = w[k] * (xr[k] * scale);
        }
    }
}

/* The MLP's activation: gu (rows, 2 * inter), its gate then its up projection; out (rows, inter) = silu(gate) x
 * up = gate x up / (1 + e^-gate), in float32, rounded once (to bfloat16 where `bf16`). e^-|gate| by
 * exp_nonpositive, so e^-gate is that or its reciprocal. */
#define SILU_BLOCK 256
void ts_silu_mul(const void *gu, void *out, int bf16, int64_t rows, int64_t inter, int threads) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows >= 64)
#endif
    for (int64_t r = 0; r < rows; r++)
        for (int64_t j0 = 0; j0 < inter; j0 += SILU_BLOCK) {
            float g[SILU_BLOCK], u[SILU_BLOCK], e[SILU_BLOCK];
            const int64_t n = inter - j0 < SILU_BLOCK ? inter - j0 : SILU_BLOCK;
            for (int64_t j = 0; j < n; j++) {
                g[j] = load(gu, r * 2 * inter + j0 + j, bf16);
                u[j] = load(gu, r * 2 * inter + inter + j0 + j, bf16);
                e[j] = -fabsf(g[j]);
            }
            exp_nonpositive(e, n);
            for (int64_t j = 0; j < n; j++) {  /* sigmoid(g): 1 / (1 + e^-g) for g >= 0, e^g / (1 + e^g) below */
                const float s = (g[j] >= 0.0f ? 1.0f : e[j]) / (1.0f + e[j]);
                e[j] = g[j] * s * u[j];
            }
            if (bf16)
                for (int64_t j = 0; j < n; j++) ((uint16_t *)out)[r * inter + j0 + j] = to_bf16(e[j]);
            else
                memcpy((float *)out + r * inter + j0, e, sizeof(float) * n);
        }
}

int ts_openmp(void) { /* whether this build splits rows among threads */
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
