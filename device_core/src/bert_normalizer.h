// BERT's text rules before WordPiece, as the `tokenizers` library applies them: the BertNormalizer (clean text,
// spaces around CJK ideographs, accent stripping, lower case -- in that order) and the BertPreTokenizer (words
// split at white space, each punctuation character a word of its own).
#pragma once

#include <string>
#include <vector>

namespace memlora {

struct BertNormalizer {
  bool clean_text = true;            // drop NUL, U+FFFD and other control characters; white space -> ' '
  bool handle_chinese_chars = true;  // a space either side of each CJK ideograph
  bool strip_accents = true;         // NFD, then no non-spacing marks (the file's null: as `lowercase`)
  bool lowercase = true;             // full lower-case mapping, character by character

  std::u32string normalize(const std::u32string& text) const;
};

// The words of normalized `text`: split at white space (removed) and around punctuation (kept, one per word).
std::vector<std::u32string> bert_pre_tokenize(const std::u32string& text);

}  // namespace memlora
