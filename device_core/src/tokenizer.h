// The decoder's tokenizer, read from a bundle's tokenizer.json: a byte-level BPE (SmolLM2's kind). Added and
// special tokens written in the text are matched first (leftmost, longest), the rest is split by the
// byte-level pre-tokenizer and merged by BPE; decoding maps the byte-level alphabet back to UTF-8. The ids are
// those of memlora/bundle_tokenizer.py (the `tokenizers` library) for the same text.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "bpe.h"
#include "pretokenizer.h"

namespace memlora {

class Tokenizer {
 public:
  // Reads `path` (a tokenizer.json); a tokenizer the core does not implement is an Error naming the file and
  // the unsupported part.
  static Tokenizer from_file(const std::string& path);

  // Ids of `text`, no special tokens added: what apply_chat_template(..., tokenize=True) gives for the
  // rendered prompt. `text` must be valid UTF-8.
  std::vector<int> encode(std::string_view text) const;

  // The text of `ids` (invalid UTF-8 from a cut character becomes U+FFFD, as in Python); special tokens are
  // left out when `skip_special_tokens`, and ids outside the vocabulary are skipped.
  std::string decode(const std::vector<int>& ids, bool skip_special_tokens) const;

  std::optional<int> token_to_id(const std::string& token) const;

 private:
  struct AddedToken {
    int id;
    std::string content;
    bool special;
    bool normalized;
  };

  Tokenizer(std::vector<AddedToken> added, PreTokenizer pre, Bpe bpe);
  // Splits `text` at added tokens whose `normalized` flag is `normalized`; matched ones go to `ids` in place
  // of their text, the rest to `encode_plain` (or, in the first pass, to the second).
  void split_added(std::string_view text, bool normalized, std::vector<int>& ids) const;
  void encode_plain(std::string_view text, std::vector<int>& ids) const;

  std::vector<AddedToken> added_;
  std::unordered_map<int, size_t> added_by_id_;
  PreTokenizer pre_;
  Bpe bpe_;
};

}  // namespace memlora
