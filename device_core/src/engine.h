// A bundle opened for the memory pipeline: its manifest, tokenizer, decoder and retrieval embedder, what the host
// runner's pipeline commands and the C API (one per handle) hold while they run. The decoder and the embedder
// are the bundle's ExecuTorch programs, or a runtime the app drives through callbacks (Core ML on iOS).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "bundle.h"
#include "callback_backend.h"
#include "conversation.h"
#include "embedder.h"
#include "executorch_backend.h"
#include "pipeline.h"
#include "store.h"
#include "tokenizer.h"

namespace memlora {

class Engine {
 public:
  // Opens the bundle at `dir` (every file's sha256 checked when `verify`) and loads every decoder method.
  Engine(const std::string& dir, bool verify);
  // The app runs `target`'s decoder through `forward` and its embedder through `embed` (or, when `embed` is
  // null, the core runs the bundle's ExecuTorch embedder); `context` is passed to both.
  Engine(const std::string& dir, bool verify, const std::string& target, ForwardFn forward, EmbedFn embed,
         void* context);

  // The embedder, opened on first use: a bundle without one still generates and replays its golden traces.
  TextEmbedder& embedder();
  // The pipeline over `store`; generations append to `trace` when it is set.
  MemoryPipeline pipeline(MemoryStore& store);
  // Ingests `exchanges` in order under the store's writer lock (a second writer waits); done ones are skipped.
  std::vector<ExchangeResult> ingest(MemoryStore& store, const std::vector<Exchange>& exchanges);

  const Bundle bundle;
  const Tokenizer tokenizer;
  Backend& backend() { return *backend_; }
  const Backend& backend() const { return *backend_; }
  std::string trace;  // "" : not tracing

 private:
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<TextEmbedder> embedder_;
  std::string app_target_;  // the target whose embedder the app runs ("" : the core's ExecuTorch embedder)
  EmbedFn app_embed_ = nullptr;
  void* app_context_ = nullptr;
};

}  // namespace memlora
