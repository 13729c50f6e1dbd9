// The byte-level pre-tokenizer: splits text into the pieces BPE encodes one by one, with GPT-2's pattern
// (contractions, letters, digits, other symbols, whitespace) matched by PCRE2 with Unicode properties.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace memlora {

class PreTokenizer {
 public:
  // `source` names tokenizer.json in errors.
  PreTokenizer(bool add_prefix_space, bool use_regex, const std::string& source);
  ~PreTokenizer();
  PreTokenizer(PreTokenizer&&) noexcept;
  PreTokenizer& operator=(PreTokenizer&&) noexcept;

  // The pieces of `text` (valid UTF-8), each as byte-level alphabet characters.
  std::vector<std::string> split(std::string_view text) const;

 private:
  struct Regex;
  bool add_prefix_space_;
  std::unique_ptr<Regex> regex_;  // null: no splitting (use_regex false)
};

}  // namespace memlora
