// A bundle opened for the memory pipeline: its manifest, tokenizer, ExecuTorch decoder and retrieval embedder,
// what the host runner's pipeline commands and the C API (one per handle) hold while they run.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "bundle.h"
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

  // The embedder, opened on first use: a bundle without one still generates and replays its golden traces.
  TextEmbedder& embedder();
  // The pipeline over `store`; generations append to `trace` when it is set.
  MemoryPipeline pipeline(MemoryStore& store);
  // Ingests `exchanges` in order under the store's writer lock (a second writer waits); done ones are skipped.
  std::vector<ExchangeResult> ingest(MemoryStore& store, const std::vector<Exchange>& exchanges);

  const Bundle bundle;
  const Tokenizer tokenizer;
  ExecuTorchBackend backend;
  std::string trace;  // "" : not tracing

 private:
  std::unique_ptr<TextEmbedder> embedder_;
};

}  // namespace memlora
