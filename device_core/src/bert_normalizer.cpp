#include "bert_normalizer.h"

#include "unicode_data.h"

namespace memlora {
namespace {

// Tab, newline and carriage return are white space to BERT, not control characters.
bool is_bert_control(char32_t c) { return c != U'\t' && c != U'\n' && c != U'\r' && is_other(c); }

// The ranges of the `tokenizers` library (its 0x2B920 start, not the CJK Extension E block's 0x2B820, included).
bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

bool is_bert_punctuation(char32_t c) {
  const bool ascii = (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
  return ascii || is_punctuation(c);  // ASCII's $+<=>^`|~ are symbols to Unicode, punctuation to BERT
}

}  // namespace

std::u32string BertNormalizer::normalize(const std::u32string& text) const {
  std::u32string s;
  s.reserve(text.size());
  for (char32_t c : text) {
    if (clean_text && (c == 0 || c == 0xFFFD || is_bert_control(c))) continue;
    if (clean_text && is_white_space(c)) c = U' ';
    if (handle_chinese_chars && is_chinese_char(c)) {
      s += U' ';
      s += c;
      s += U' ';
    } else {
      s += c;
    }
  }
  if (strip_accents) {
    std::u32string kept;
    for (char32_t c : nfd(s)) {
      if (!is_nonspacing_mark(c)) kept += c;
    }
    s.swap(kept);
  }
  if (lowercase) {
    std::u32string lower;
    lower.reserve(s.size());
    for (char32_t c : s) append_lowercase(lower, c);
    s.swap(lower);
  }
  return s;
}

std::vector<std::u32string> bert_pre_tokenize(const std::u32string& text) {
  std::vector<std::u32string> words;
  std::u32string word;
  const auto flush = [&] {
    if (!word.empty()) words.push_back(word);
    word.clear();
  };
  for (char32_t c : text) {
    if (is_white_space(c)) {
      flush();
    } else if (is_bert_punctuation(c)) {
      flush();
      words.emplace_back(1, c);
    } else {
      word += c;
    }
  }
  flush();
  return words;
}

}  // namespace memlora
