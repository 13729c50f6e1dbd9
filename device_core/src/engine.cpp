#include "engine.h"

namespace memlora {

Engine::Engine(const std::string& dir, bool verify)
    : bundle(load_bundle(dir, verify)),
      tokenizer(Tokenizer::from_file(bundle.file(bundle.manifest.tokenizer_dir + "/tokenizer.json"))) {
  auto executorch = std::make_unique<ExecuTorchBackend>(bundle);
  executorch->preload();
  backend_ = std::move(executorch);
}

Engine::Engine(const std::string& dir, bool verify, const std::string& target, ForwardFn forward, EmbedFn embed,
               void* context)
    : bundle(load_bundle(dir, verify)),
      tokenizer(Tokenizer::from_file(bundle.file(bundle.manifest.tokenizer_dir + "/tokenizer.json"))),
      backend_(std::make_unique<CallbackBackend>(bundle, target, forward, context)),
      app_target_(embed ? target : ""),
      app_embed_(embed),
      app_context_(context) {}

TextEmbedder& Engine::embedder() {
  if (!embedder_) {
    embedder_ = app_embed_ ? std::make_unique<TextEmbedder>(bundle, app_target_, app_embed_, app_context_)
                           : std::make_unique<TextEmbedder>(bundle);
  }
  return *embedder_;
}

MemoryPipeline Engine::pipeline(MemoryStore& store) {
  return MemoryPipeline(bundle, tokenizer, backend(), embedder(), store, trace);
}

std::vector<ExchangeResult> Engine::ingest(MemoryStore& store, const std::vector<Exchange>& exchanges) {
  MemoryPipeline memory = pipeline(store);
  const MemoryStore::Writer lock(store);
  std::vector<ExchangeResult> results;
  for (const Exchange& x : exchanges) results.push_back(memory.ingest(x.key, x.turns));
  return results;
}

}  // namespace memlora
