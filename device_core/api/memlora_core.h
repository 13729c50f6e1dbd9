/* The on-device core's C API: what android_demo/ (JNI) and ios_demo/ (Objective-C++) call, and nothing else.
 *
 * Plain C so that any FFI can bind it: one opaque handle per opened bundle, requests and results as UTF-8 JSON
 * strings, and on failure the core's own one-line message (naming the file and the problem, as the memlora CLI
 * prints it) instead of a result. Every returned string is allocated by the core and released with
 * memlora_core_free; a handle is used by one thread at a time.
 *
 * Calling convention: a function that produces a result returns it (JSON, never NULL on success) and leaves
 * *error untouched; on failure it returns NULL (or a non-zero int) and sets *error to the message. `error` may be
 * NULL when the caller does not want the message.
 */
#ifndef MEMLORA_CORE_H
#define MEMLORA_CORE_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__) || defined(__clang__)
#define MEMLORA_CORE_API __attribute__((visibility("default")))
#else
#define MEMLORA_CORE_API
#endif

typedef struct memlora_core memlora_core;

/* {"api": 2, "bundle_schema": "memlora-bundle/3", "trace_schema": "memlora-trace/1"}. */
MEMLORA_CORE_API char* memlora_core_version(void);

/* Opens the bundle directory `bundle_dir`: its manifest, and when `verify` is non-zero every file's sha256 and no
 * unlisted file (what `memlora-core verify` checks); then its tokenizer and its ExecuTorch target, every method
 * loaded. NULL and *error on any problem. */
MEMLORA_CORE_API memlora_core* memlora_core_open(const char* bundle_dir, int verify, char** error);

/* A runtime the app drives itself (Core ML on iOS: the bundle's stateful multifunction package, one function per
 * adapter; or ONNX Runtime) runs the decoder, while the core keeps the rest: prompts, the decode loop and its
 * constraints, parsing, retrieval and the store.
 * forward: runs `count` tokens at positions start .. start+count-1 with `adapter` active (NULL: the base model)
 *          and writes the last position's `vocab` logits; the app keeps the KV cache: a call at start 0 begins a
 *          sequence, a later one continues it (the core checks this contract before it calls).
 * embed:   one text's `count` WordPiece ids (special tokens added, attention mask all ones) to the `dim` floats of
 *          its unit vector, through the bundle's embedder of `target`.
 * Each returns 0, or non-zero with a one-line message (NUL-terminated, at most message_size bytes) in `message`,
 * which the core's error then quotes. */
typedef int (*memlora_forward_fn)(void* context, const int32_t* tokens, int32_t count, int32_t start,
                                  const char* adapter, float* logits, int32_t vocab, char* message, int32_t message_size);
typedef int (*memlora_embed_fn)(void* context, const int64_t* ids, int32_t count, float* vector, int32_t dim,
                                char* message, int32_t message_size);

/* Opens the bundle directory as memlora_core_open does, for `target` (a name in its manifest's targets) with the
 * app's forward pass; `embed` NULL: the core runs the bundle's ExecuTorch embedder. `context` is passed to both. */
MEMLORA_CORE_API memlora_core* memlora_core_open_with(const char* bundle_dir, int verify, const char* target,
                                                      memlora_forward_fn forward, memlora_embed_fn embed, void* context,
                                                      char** error);

MEMLORA_CORE_API void memlora_core_close(memlora_core* core);

/* Frees a string the core returned (a result or an error); NULL is ignored. */
MEMLORA_CORE_API void memlora_core_free(char* text);

/* What the opened bundle is: {"bundle", "model", "backend", "adapters", "operations": {op: {"adapter",
 * "max_new_tokens"}}, "max_context", "vocab", "trace"}. */
MEMLORA_CORE_API char* memlora_core_info(memlora_core* core, char** error);

/* Replays the bundle's golden traces: the report of `memlora-core selftest --json` ({"passed", "records": [...],
 * "prompt_tokens", "prefill_seconds", "decode_steps", "decode_seconds", "decode_tokens_per_second"}). A mismatch
 * is a result with "passed": false, not an error. */
MEMLORA_CORE_API char* memlora_core_selftest(memlora_core* core, char** error);

/* Every later generation appends its trace record (memlora/schemas/trace.schema.json, backend "executorch") to
 * the JSONL file at `path`, created if missing -- the device trace `memlora parity --trace` replays. NULL or ""
 * stops tracing. Returns 0, or non-zero and *error. */
MEMLORA_CORE_API int memlora_core_trace_to(memlora_core* core, const char* path, char** error);

/* One generation with an operation's settings, under its output constraint (docs/constraints.md), as
 * `memlora-core generate` runs it.
 *   request: {"op": "extract"|"mem_update"|"answer", "prompt_ids": [int, ...], "max_new_tokens": int >= 1
 *            (optional, capped at the operation's), "shown": the memories a mem_update prompt shows (default 0)}
 *   result:  {"op", "adapter", "text", "output_ids", "stop_reason", "prompt_tokens", "decode_steps",
 *            "prefill_tokens_per_second", "decode_tokens_per_second"} */
MEMLORA_CORE_API char* memlora_core_generate(memlora_core* core, const char* request_json, char** error);

/* The memory pipeline over a SQLite store (memlora/store.py's file and semantics: one transaction per exchange,
 * resumable, a second writer waits for the first), as `memlora ingest`, `memlora ask` and `memlora memories` run it.
 * Generations append to the trace file memlora_core_trace_to set.
 *   ingest:   {"store": path, "file": path of JSONL turns or a LoCoMo conversation, "sessions": "1-2" (optional),
 *             "window": turns per exchange (default 4)} or {"store": path, "id": conversation id (default "app"),
 *             "turns": [{"speaker", "text", "date", "turn_id" (optional; default T<n> within its date)}, ...]}
 *             -> {"store", "exchanges": [{"key", "status", "facts", "events": [{"event", "id"}], "error",
 *             "turn_ids"}], "statuses": {status: count}, "memories": count}; status is applied, no_facts,
 *             done_before, malformed or too_long (the last two recorded in the store, never applied)
 *   ask:      {"store": path, "question": text} -> {"answer", "memories": [{"id", "text", "date", "score"}],
 *             "adapter", "prompt_tokens", "decode_steps", "prefill_tokens_per_second", "decode_tokens_per_second"}
 *   memories: {"store": path, "history": bool} -> {"memories": [{"id", "text", "date"}], "history": [{"seq",
 *             "memory_id", "event", "old_text", "new_text", "date", "turn_ids", "exchange"}] or null, "exchanges"} */
MEMLORA_CORE_API char* memlora_core_ingest(memlora_core* core, const char* request_json, char** error);
MEMLORA_CORE_API char* memlora_core_ask(memlora_core* core, const char* request_json, char** error);
MEMLORA_CORE_API char* memlora_core_memories(memlora_core* core, const char* request_json, char** error);

#ifdef __cplusplus
}
#endif

#endif /* MEMLORA_CORE_H */
