#include "engine.h"

namespace memlora {

Engine::Engine(const std::string& dir, bool verify)
    : bundle(load_bundle(dir, verify)),
      tokenizer(Tokenizer::from_file(bundle.file(bundle.manifest.tokenizer_dir + "/tokenizer.json"))),
      backend(bundle) {
  backend.preload();
}

TextEmbedder& Engine::embedder() {
  if (!embedder_) embedder_ = std::make_unique<TextEmbedder>(bundle);
  return *embedder_;
}

MemoryPipeline Engine::pipeline(MemoryStore& store) {
  return MemoryPipeline(bundle, tokenizer, backend, embedder(), store, trace);
}

std::vector<ExchangeResult> Engine::ingest(MemoryStore& store, const std::vector<Exchange>& exchanges) {
  MemoryPipeline memory = pipeline(store);
  const MemoryStore::Writer lock(store);
  std::vector<ExchangeResult> results;
  for (const Exchange& x : exchanges) results.push_back(memory.ingest(x.key, x.turns));
  return results;
}

}  // namespace memlora
