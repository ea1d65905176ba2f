// Teacher-forced logits from llama.cpp, in the format of `llamart logits`: one JSON line per
// position, {"pos", "lse", "top": [[id, logit], ...]}, the 256 largest logits.
//
//   llamacpp-logits MODEL.gguf IDS [--no-repack] [--kv f16|f32] [--flash-attn]
//
// IDS is a comma-separated list, evaluated as one batch from an empty cache with the golden
// files' llama.cpp settings (n_ctx = n_batch = n_ubatch = 1024, 2 threads, f16 KV cache, flash
// attention off). --no-repack turns off llama.cpp's repacked weight layouts (its "extra buffer
// types"), which changes the order of some float sums and nothing else. Built by tools/envelope.
#include "llama.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { TOP = 256, MAX_IDS = 1024 };

static void quiet(enum ggml_log_level level, const char *text, void *user) {
    (void)level, (void)text, (void)user;
}

// Indices of the `k` largest of `v[0..n]`, largest first (insertion into a sorted prefix).
static void top_k(const float *v, int n, int *idx, int k) {
    int have = 0;
    for (int j = 0; j < n; j++) {
        if (have == k && v[j] <= v[idx[k - 1]]) continue;
        int q = have < k ? have++ : k - 1;
        while (q > 0 && v[idx[q - 1]] < v[j]) { idx[q] = idx[q - 1]; q--; }
        idx[q] = j;
    }
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s MODEL.gguf IDS [--no-repack] [--kv f16|f32] [--flash-attn]\n", argv[0]);
        return 2;
    }
    struct llama_model_params mp = llama_model_default_params();
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = cp.n_batch = cp.n_ubatch = MAX_IDS;
    cp.n_threads = cp.n_threads_batch = 2;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.type_k = cp.type_v = GGML_TYPE_F16;
    for (int a = 3; a < argc; a++) {
        if (!strcmp(argv[a], "--no-repack")) mp.use_extra_bufts = false;
        else if (!strcmp(argv[a], "--flash-attn")) cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
        else if (!strcmp(argv[a], "--kv") && a + 1 < argc && !strcmp(argv[a + 1], "f32")) cp.type_k = cp.type_v = GGML_TYPE_F32, a++;
        else if (!strcmp(argv[a], "--kv") && a + 1 < argc && !strcmp(argv[a + 1], "f16")) a++;
        else { fprintf(stderr, "unknown argument %s\n", argv[a]); return 2; }
    }
    static llama_token ids[MAX_IDS];
    int n = 0;
    for (char *p = strtok(argv[2], ","); p; p = strtok(NULL, ",")) {
        if (n == MAX_IDS) { fprintf(stderr, "more than %d ids\n", MAX_IDS); return 2; }
        ids[n++] = atoi(p);
    }
    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model *model = llama_model_load_from_file(argv[1], mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }
    struct llama_batch batch = llama_batch_init(n, 0, 1);
    for (int i = 0; i < n; i++) {
        batch.token[i] = ids[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n;
    if (llama_decode(ctx, batch)) { fprintf(stderr, "llama_decode failed\n"); return 1; }
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    int top[TOP];
    for (int i = 0; i < n; i++) {
        const float *l = llama_get_logits_ith(ctx, i);
        top_k(l, n_vocab, top, TOP);
        double sum = 0;
        for (int j = 0; j < n_vocab; j++) sum += exp((double)l[j] - l[top[0]]);
        printf("{\"pos\": %d, \"lse\": %.9g, \"top\": [", i, l[top[0]] + log(sum));
        for (int q = 0; q < TOP; q++) printf("%s[%d, %.9g]", q ? ", " : "", top[q], l[top[q]]);
        printf("]}\n");
    }
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
