// The Unicode character data the embedder's BERT tokenizer needs, from tables generated from Python's Unicode
// database (tools/unicode_tables.py -> unicode_data_tables.inc): general categories, NFD, full lower case.
#pragma once

#include <string>

namespace memlora {

bool is_other(char32_t c);             // general category Cc, Cf, Co or Cs (not Cn)
bool is_punctuation(char32_t c);       // general category P*
bool is_nonspacing_mark(char32_t c);   // general category Mn
bool is_white_space(char32_t c);       // the White_Space property (Rust's char::is_whitespace)

// `text` in Normalization Form D: full canonical decomposition, then canonical ordering of combining marks.
std::u32string nfd(const std::u32string& text);

// The full lower-case mapping of one character (U+0130 -> "i\u0307"; no context, so Σ is always σ), appended.
void append_lowercase(std::u32string& out, char32_t c);

}  // namespace memlora
