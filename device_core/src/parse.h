// memlora/parse.py on the device: the model's output of each operation into typed results, or rejected whole
// (MalformedOutput, with parse.py's reason word for word) so a half-valid output never half-updates the store.
#pragma once

#include <set>
#include <string>
#include <vector>

#include "error.h"

namespace memlora {

class MalformedOutput : public Error {
 public:
  explicit MalformedOutput(const std::u32string& reason);
  std::u32string reason;  // the text of parse.py's MalformedOutput (code points: it may quote a lone surrogate)
};

// One Mem0 event; `id` is the prompt's temporary id for UPDATE/DELETE/NONE, absent (has_id false) for ADD.
struct MemoryEvent {
  std::string event;
  bool has_id = false;
  std::u32string id;
  std::u32string text;
  std::u32string old_memory;
};

// {"facts": [...]} -> the non-empty, stripped, de-duplicated facts in order
std::vector<std::u32string> parse_facts(const std::u32string& text);
// {"memory": [{"id", "text", "event", "old_memory"}]} -> events naming only `known_ids`, no id changed twice
std::vector<MemoryEvent> parse_update(const std::u32string& text, const std::set<std::u32string>& known_ids);
// the first line of the stripped output, stripped
std::u32string parse_answer(const std::u32string& text);

}  // namespace memlora
