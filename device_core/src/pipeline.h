// Mem0's memory pipeline on the device, as memlora/pipeline.py runs it on every backend: extract facts from an
// exchange, retrieve the memories near them, decide ADD/UPDATE/DELETE/NONE, apply the changes in one store
// transaction; answer a question from the memories nearest to it. Each operation runs with its adapter, under
// its output constraint; a malformed output or a prompt too long for the context is recorded as a skipped
// exchange (with its reason), never applied.
#pragma once

#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "backend.h"
#include "bundle.h"
#include "conversation.h"
#include "embedder.h"
#include "generate.h"
#include "prompts.h"
#include "store.h"
#include "tokenizer.h"

namespace memlora {

struct ExchangeResult {
  std::string key;
  std::string status;  // applied | no_facts | done_before | malformed | too_long
  std::vector<std::string> facts;
  std::vector<std::pair<std::string, std::string>> events;  // (event, store id) of every change but NONE
  std::string error;
  std::vector<std::string> turn_ids;
};

struct Answer {
  std::string text;
  std::vector<StoredMemory> memories;
  Generation generation;
};

class MemoryPipeline {
 public:
  // `trace`: a JSONL file every generation appends its trace record to ("" : none).
  MemoryPipeline(const Bundle& bundle, const Tokenizer& tokenizer, Backend& backend, TextEmbedder& embedder,
                 MemoryStore& store, std::string trace = "");

  // One exchange; its changes land in one transaction, or nothing lands ("done_before" if it already did).
  ExchangeResult ingest(const std::string& key, const std::vector<Turn>& turns);
  Answer answer(const std::string& question);

  // The decode of `op` for a prompt text (`shown`: memories an update prompt shows).
  Generation run(const std::string& op, const std::string& prompt, int shown = 0);

 private:
  std::vector<StoredMemory> related(const std::vector<std::vector<float>>& fact_vectors);

  const Bundle& bundle_;
  const Tokenizer& tokenizer_;
  Backend& backend_;
  TextEmbedder& embedder_;
  MemoryStore& store_;
  std::string trace_;
  PromptBuilder prompts_;
  Retrieval retrieval_;
  std::set<int> eos_ids_;
};

// memlora/pipeline.py's SKIPPED: the statuses of exchanges recorded without changes, and what to call them.
std::optional<std::string> skipped_reason(const std::string& status);

}  // namespace memlora
