// The three memory operations' prompts, as memlora/prompts.py builds them: the manifest's templates filled in
// (str.format's {field} and {{ }}), wrapped in the model's chat format (manifest prompts.chat, written by
// `memlora export` so no Jinja runs on the device). The pipeline tokenizes the text with the bundle's tokenizer.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "bundle.h"
#include "conversation.h"
#include "store.h"

namespace memlora {

class PromptBuilder {
 public:
  // Error naming the manifest when the bundle has no chat format (exported by memlora 0.4.0) or lacks a
  // template of the three operations.
  explicit PromptBuilder(const Bundle& bundle);

  std::string extract(const std::vector<Turn>& turns) const;
  // Facts and memories as memlora/prompts.py shows them: JSON with the memories' temporary ids "0", "1", ...
  std::string update(const std::vector<std::string>& facts, const std::vector<StoredMemory>& memories) const;
  std::string answer(const std::string& question, const std::vector<StoredMemory>& memories) const;

 private:
  std::string chat(const std::string& op, const std::map<std::string, std::string>& fields) const;

  std::string manifest_;
  ChatFormat format_;
  std::map<std::string, PromptTemplate> templates_;
};

}  // namespace memlora
