#include "utf8.h"

namespace memlora {

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

namespace {

size_t sequence_length(uint8_t lead) {
  return lead < 0x80 ? 1 : lead >> 5 == 0x6 ? 2 : lead >> 4 == 0xE ? 3 : 4;
}

// Bytes of the longest valid prefix of a character at `s[i]` (0: `s[i]` starts no valid sequence); a result
// shorter than the lead byte announces is a truncated sequence: one U+FFFD for it.
size_t valid_prefix(std::string_view s, size_t i, bool& complete) {
  const auto b = [&](size_t k) { return uint8_t(s[i + k]); };
  const uint8_t lead = b(0);
  complete = false;
  if (lead < 0x80) {
    complete = true;
    return 1;
  }
  size_t need;
  uint8_t lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    need = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    need = 3;
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    need = 4;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  size_t k = 1;
  for (; k < need && i + k < s.size(); ++k) {
    const uint8_t c = b(k);
    const uint8_t min = k == 1 ? lo : 0x80, max = k == 1 ? hi : 0xBF;
    if (c < min || c > max) break;
  }
  complete = k == need;
  return k;
}

}  // namespace

uint32_t next_codepoint(std::string_view s, size_t& i) {
  const size_t n = sequence_length(uint8_t(s[i]));
  uint32_t cp = n == 1 ? uint8_t(s[i]) : uint8_t(s[i]) & (0x7F >> n);
  for (size_t k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (uint8_t(s[i + k]) & 0x3F);
  i += n;
  return cp;
}

std::vector<std::string> utf8_chars(std::string_view text) {
  std::vector<std::string> out;
  for (size_t i = 0; i < text.size();) {
    const size_t n = sequence_length(uint8_t(text[i]));
    out.emplace_back(text.substr(i, n));
    i += n;
  }
  return out;
}

std::string utf8_lossy(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    bool complete;
    const size_t k = valid_prefix(bytes, i, complete);
    if (complete) {
      out.append(bytes.substr(i, k));
    } else {
      out += "\xEF\xBF\xBD";  // U+FFFD for the maximal invalid subpart
    }
    i += k == 0 ? 1 : k;
  }
  return out;
}

size_t first_invalid_utf8(std::string_view bytes) {
  for (size_t i = 0; i < bytes.size();) {
    bool complete;
    const size_t k = valid_prefix(bytes, i, complete);
    if (!complete) return i;
    i += k;
  }
  return std::string_view::npos;
}

}  // namespace memlora
