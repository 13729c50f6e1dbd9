// UTF-8 helpers the tokenizer needs: split text into characters, and turn arbitrary bytes into text the way
// `tokenizers` does when it decodes (Rust's String::from_utf8_lossy), so a reply cut inside a multi-byte
// character reads the same on the device as in Python.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace memlora {

void append_utf8(std::string& out, uint32_t codepoint);

// The characters of valid UTF-8 `text`, each as its own byte string.
std::vector<std::string> utf8_chars(std::string_view text);

// The code point of the character starting at `text[i]` (valid UTF-8); `i` advances past it.
uint32_t next_codepoint(std::string_view text, size_t& i);

// `bytes` with every maximal invalid UTF-8 subsequence replaced by U+FFFD (the Unicode "maximal subpart"
// practice that from_utf8_lossy and Python's errors="replace" follow).
std::string utf8_lossy(std::string_view bytes);

// The offset of the first byte that strict decoding (Python's bytes.decode("utf-8")) rejects: the start of the
// first invalid or truncated sequence; npos when `bytes` is valid UTF-8.
size_t first_invalid_utf8(std::string_view bytes);

}  // namespace memlora
