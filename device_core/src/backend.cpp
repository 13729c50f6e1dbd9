#include "backend.h"

#include <algorithm>

#include "error.h"

namespace memlora {

std::string adapter_repr(const AdapterName& adapter) { return adapter ? "'" + *adapter + "'" : "None"; }

void Backend::check(const std::vector<int>& tokens, int start, const AdapterName& adapter) const {
  const std::string& me = name();
  const auto& known = adapters();
  if (adapter && std::find(known.begin(), known.end(), *adapter) == known.end()) {
    std::string have;
    for (const auto& a : known) have += (have.empty() ? "" : ", ") + a;
    throw Error(me + ": unknown adapter '" + *adapter + "' (adapters: " + (have.empty() ? "none" : have) + ")");
  }
  if (tokens.empty()) throw Error(me + ": no tokens to run at start " + std::to_string(start));
  if (start < 0) throw Error(me + ": start " + std::to_string(start) + " is negative");
  if (start > cached_) {
    throw Error(me + ": start " + std::to_string(start) + " is beyond the " + std::to_string(cached_) +
                " positions in the cache (a sequence starts at 0 and continues where the last call ended)");
  }
  if (start + int(tokens.size()) > max_context()) {
    throw Error(me + ": positions " + std::to_string(start) + ".." + std::to_string(start + int(tokens.size()) - 1) +
                " exceed the context of " + std::to_string(max_context()));
  }
  if (start > 0 && adapter != sequence_adapter_) {
    throw Error(me + ": adapter " + adapter_repr(adapter) + " at start " + std::to_string(start) +
                " would continue a sequence of adapter " + adapter_repr(sequence_adapter_) +
                "; an adapter change needs start 0");
  }
  for (int t : tokens) {
    if (t < 0 || t >= vocab()) {
      throw Error(me + ": token id " + std::to_string(t) + " is outside the vocabulary of " + std::to_string(vocab()));
    }
  }
}

std::vector<float> Backend::forward(const std::vector<int>& tokens, int start, const AdapterName& adapter) {
  check(tokens, start, adapter);
  cached_ = 0;  // a runtime failure below may leave the cache half written: nothing to continue
  std::vector<float> logits = run(tokens, start, adapter);
  cached_ = start + int(tokens.size());
  sequence_adapter_ = adapter;
  return logits;
}

}  // namespace memlora
