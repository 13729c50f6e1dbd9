// The decode loop, as memlora/generate.py runs it on every backend: greedy (argmax, ties to the lowest id),
// ends on an eos id, a stop string in the decoded text, or the token budget (the smaller of max_new_tokens
// and the room left in the context).
// With a constraint (docs/constraints.md) the argmax runs over the tokens it allows with the budget left, so
// the output always ends complete with eos; traces keep the raw logits' top-k and name the table.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "backend.h"
#include "constrain.h"
#include "error.h"
#include "tokenizer.h"
#include "trace.h"

namespace memlora {

// The prompt leaves no room to generate (memlora/generate.py's PromptTooLong): the input, not the model, is at
// fault, so the pipeline records the exchange as too long and moves on.
class PromptTooLong : public Error {
 public:
  using Error::Error;
};

struct GenerationConfig {
  int max_new_tokens = 256;
  std::vector<std::string> stop;
  int trace_top_k = 5;
};

struct Generation {
  TraceRecord record;          // what a trace file holds for this call (backend, op, ids, top-k, text)
  double prefill_seconds = 0;  // the prompt's forward pass
  double decode_seconds = 0;   // every later forward pass
  int decode_steps = 0;        // forward passes after the prompt's
};

// Greedy-decode from `prompt_ids` with `adapter` active (under `constraint` unless null); PromptTooLong "prompt
// of N tokens leaves ..." when nothing, or not the shortest constrained output, can be generated.
Generation generate(Backend& backend, const Tokenizer& tokenizer, const std::vector<int>& prompt_ids,
                    const AdapterName& adapter, const GenerationConfig& config, const std::set<int>& eos_ids,
                    const std::string& op, const Constraint* constraint = nullptr);

}  // namespace memlora
