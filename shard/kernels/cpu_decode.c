/* A whole step's decoder layers in one call and one OpenMP parallel region.
 *
 * Called layer by layer from Python, a SmolLM2 step is ~300 calls (ten per layer) and as many parallel
 * regions; at batch 1 in bf16 the weights take ~10 ms to stream and the calls and region start-ups
 * added ~5 ms more. Here Python calls once per step: the team runs every operation of every layer as a
 * worksharing loop of cpu_gemv.c / cpu_ops.c, the loop's barrier ordering it after the one before.
 * Each operation computes exactly what its per-call form does, so the logits are the same bits.
 *
 * Only for one rank (tensor parallelism all-reduces between operations, in Python) and rows that all
 * attend through the paged cache (decode tokens, and prompt tokens of a step small enough for the GEMV
 * kernels), each up to its own position.
 */
#include <omp.h>
#include <stdint.h>

void gemv_f32_team(const float *x, const float *w, const float *bias, float *y, int B, int N, int K);
void gemv_bf16_team(const uint16_t *x, const uint16_t *w, const uint16_t *bias, uint16_t *y, int B, int N, int K);
void rms_norm_team(const void *x, const void *weight, void *out, int rows, int dim, float eps, int bf16);
void add_rms_norm_team(void *x, const void *delta, const void *weight, void *out, int rows, int dim, float eps,
                       int bf16);
void rotate_and_store_team(void *qkv, int rows, int num_q, int num_kv, int head_dim, const float *cos_table,
                           const float *sin_table, const int64_t *slots, void *k_cache, void *v_cache, int bf16);
void paged_attention_team(const void *q, int64_t q_row_stride, const void *k_cache, const void *v_cache,
                          const int32_t *block_tables, int max_blocks, const int32_t *lengths, int batch, int num_q,
                          int num_kv, int head_dim, int block_size, float scale, void *out, int bf16);
void silu_mul_team(const void *gate_up, void *out, int rows, int width, int bf16);
void gemv_q8_team(const void *x, const int8_t *w, const float *scales, const void *bias, void *y, int B, int N,
                  int K, int bf16);
void gemv_q4_team(const void *x, const uint8_t *w, const void *bias, void *y, int B, int N, int K, int bf16);

/* One decoder layer's tensors (biases may be NULL); mirrored by a ctypes Structure in cpu.py. The *_scales
 * are the int8 matrices' per-row scales (quant 8; NULL otherwise: int4 blocks hold their own). */
struct decode_layer {
  const void *input_norm, *qkv, *qkv_bias, *o_proj, *o_bias, *post_norm, *gate_up, *gate_up_bias, *down, *down_bias;
  void *k_cache, *v_cache;
  const float *qkv_scales, *o_scales, *gate_up_scales, *down_scales;
};

/* Model dimensions and this step's inputs; mirrored by a ctypes Structure in cpu.py. */
struct decode_step {
  int batch, hidden, num_q, num_kv, head_dim, intermediate, block_size, max_blocks, bf16;
  int threads;                    /* the team's size: shard/thread_governor.py picks it per step */
  float eps, scale;
  const float *cos, *sin;         /* [batch, head_dim / 2] */
  const int64_t *slots;           /* [batch]: where each row's new key and value go */
  const int32_t *block_tables;    /* [batch, max_blocks] */
  const int32_t *lengths;         /* [batch]: context length including the new token */
  void *h, *qkv, *attn, *gate_up, *act; /* scratch: [batch, hidden | qkv width | num_q * head_dim | 2 I | I] */
  int quant;                      /* the matrices' weights: 0 the model's dtype, 8 int8, 4 int4 */
};

static void gemv_team(const void *x, const void *w, const float *scales, const void *bias, void *y, int B, int N,
                      int K, int bf16, int quant) {
  if (quant == 8) gemv_q8_team(x, w, scales, bias, y, B, N, K, bf16);
  else if (quant == 4) gemv_q4_team(x, w, bias, y, B, N, K, bf16);
  else if (bf16) gemv_bf16_team(x, w, bias, y, B, N, K);
  else gemv_f32_team(x, w, bias, y, B, N, K);
}

/* x [batch, hidden] holds the embeddings and ends as the residual stream before the last layer's MLP
 * output, which goes to delta [batch, hidden]: the caller's final norm adds the two, as the Python
 * layers return them. */
void decode_layers(const struct decode_layer *layers, int num_layers, const struct decode_step *s, void *x,
                   void *delta) {
  int B = s->batch, D = s->hidden, qkv_width = (s->num_q + 2 * s->num_kv) * s->head_dim;
  int attn_width = s->num_q * s->head_dim;
#pragma omp parallel num_threads(s->threads > 0 ? s->threads : omp_get_max_threads())
  for (int l = 0; l < num_layers; l++) {
    const struct decode_layer *L = layers + l;
    if (l == 0) rms_norm_team(x, L->input_norm, s->h, B, D, s->eps, s->bf16);
    else add_rms_norm_team(x, delta, L->input_norm, s->h, B, D, s->eps, s->bf16);
    gemv_team(s->h, L->qkv, L->qkv_scales, L->qkv_bias, s->qkv, B, qkv_width, D, s->bf16, s->quant);
    rotate_and_store_team(s->qkv, B, s->num_q, s->num_kv, s->head_dim, s->cos, s->sin, s->slots, L->k_cache,
                          L->v_cache, s->bf16);
    paged_attention_team(s->qkv, qkv_width, L->k_cache, L->v_cache, s->block_tables, s->max_blocks, s->lengths, B,
                         s->num_q, s->num_kv, s->head_dim, s->block_size, s->scale, s->attn, s->bf16);
    gemv_team(s->attn, L->o_proj, L->o_scales, L->o_bias, delta, B, D, attn_width, s->bf16, s->quant);
    add_rms_norm_team(x, delta, L->post_norm, s->h, B, D, s->eps, s->bf16);
    gemv_team(s->h, L->gate_up, L->gate_up_scales, L->gate_up_bias, s->gate_up, B, 2 * s->intermediate, D, s->bf16,
              s->quant);
    silu_mul_team(s->gate_up, s->act, B, s->intermediate, s->bf16);
    gemv_team(s->act, L->down, L->down_scales, L->down_bias, delta, B, D, s->intermediate, s->bf16, s->quant);
  }
}
