#include "generate.h"

#include <algorithm>
#include <chrono>

#include "error.h"

namespace memlora {
namespace {

using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

int argmax(const std::vector<float>& logits) {
  return int(std::max_element(logits.begin(), logits.end()) - logits.begin());  // first maximum: the lowest id
}

// Byte offset of the earliest stop string in `text`, or npos.
size_t first_stop(const std::string& text, const std::vector<std::string>& stop) {
  size_t cut = std::string::npos;
  for (const std::string& s : stop) cut = std::min(cut, text.find(s));
  return cut;
}

}  // namespace

Generation generate(Backend& backend, const Tokenizer& tokenizer, const std::vector<int>& prompt_ids,
                    const AdapterName& adapter, const GenerationConfig& config, const std::set<int>& eos_ids,
                    const std::string& op, const Constraint* constraint) {
  const int budget = std::min(config.max_new_tokens, backend.max_context() - int(prompt_ids.size()));
  if (budget <= 0) {
    throw PromptTooLong("prompt of " + std::to_string(prompt_ids.size()) + " tokens leaves no room in a context of " +
                std::to_string(backend.max_context()));
  }
  int state = 0;
  if (constraint) {
    if (eos_ids.empty()) throw Error("constraint " + constraint->name() + ": no eos id to end the output with");
    if (constraint->needs(state) > budget) {
      throw PromptTooLong("prompt of " + std::to_string(prompt_ids.size()) + " tokens leaves " + std::to_string(budget) +
                  " in a context of " + std::to_string(backend.max_context()) + "; the shortest " + constraint->name() +
                  " output takes " + std::to_string(constraint->needs(state)));
    }
  }
  const std::vector<int> eos(eos_ids.begin(), eos_ids.end());
  Generation g;
  TraceRecord& r = g.record;
  if (constraint) r.constraint = constraint->name();
  r.backend = backend.name();
  r.op = op;
  r.adapter = adapter;
  r.prompt_ids = prompt_ids;
  r.stop_reason = "length";
  backend.reset();
  auto t = Clock::now();
  std::vector<float> logits = backend.forward(prompt_ids, 0, adapter);
  g.prefill_seconds = since(t);
  int pos = int(prompt_ids.size());
  bool stopped = false;
  while (true) {
    r.topk.push_back(top_k(logits, config.trace_top_k));
    const int token = constraint ? constraint->choose(logits, state, budget - int(r.output_ids.size()), eos) : argmax(logits);
    if (eos_ids.count(token)) {
      r.stop_reason = "eos";
      break;
    }
    r.output_ids.push_back(token);
    if (constraint) state = constraint->advance(state, token);
    if (!config.stop.empty()) {
      r.text = tokenizer.decode(r.output_ids, true);
      const size_t cut = first_stop(r.text, config.stop);
      if (cut != std::string::npos) {
        r.text.resize(cut);
        r.stop_reason = "stop";
        stopped = true;
        break;
      }
    }
    if (int(r.output_ids.size()) >= budget) break;
    t = Clock::now();
    logits = backend.forward({token}, pos, adapter);
    g.decode_seconds += since(t);
    ++g.decode_steps;
    ++pos;
  }
  if (!stopped) r.text = tokenizer.decode(r.output_ids, true);
  return g;
}

}  // namespace memlora
