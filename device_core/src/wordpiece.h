// The retrieval embedder's tokenizer, read from its tokenizer.json: a BERT WordPiece (all-MiniLM-L6-v2's kind).
// Special tokens written in the text are matched first (leftmost, longest); the rest is normalized by the
// BertNormalizer, split into words by the BertPreTokenizer and each word cut into the longest vocabulary pieces
// (later pieces with the continuing-subword prefix; a word with no cut, or too long, is the unknown token);
// the post-processor's special tokens go around the ids, which are truncated first so that all of them fit.
// The ids are those of the `tokenizers` library with truncation enabled, as memlora.runtime.bundle_embedder
// encodes one text.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "bert_normalizer.h"

namespace memlora {

class WordPieceTokenizer {
 public:
  // Reads `path` (a tokenizer.json); `truncation` is the most ids a text gets, special tokens included. A
  // tokenizer the core does not implement is an Error naming the file and the unsupported part.
  static WordPieceTokenizer from_file(const std::string& path, int truncation);

  // Ids of `text` (valid UTF-8), special tokens added, truncated.
  std::vector<int64_t> encode(std::string_view text) const;

 private:
  struct AddedToken {
    int64_t id;
    std::string content;
  };

  WordPieceTokenizer() = default;
  void encode_plain(std::string_view text, std::vector<int64_t>& ids) const;  // text without added tokens
  void encode_word(const std::u32string& word, std::vector<int64_t>& ids) const;

  std::vector<AddedToken> added_;
  BertNormalizer normalizer_;
  std::unordered_map<std::string, int64_t> vocab_;
  int64_t unk_id_ = 0;
  std::string prefix_;        // continuing_subword_prefix
  size_t max_word_chars_ = 0;  // max_input_chars_per_word
  std::vector<int64_t> before_, after_;  // the post-processor's special tokens around the text's ids
  size_t max_text_ids_ = 0;    // truncation less the special tokens
};

}  // namespace memlora
