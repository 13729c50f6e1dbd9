#include "py_text.h"

#include <algorithm>
#include <cstdio>
#include <iterator>

#include "utf8.h"

namespace memlora {

namespace {

struct Range {
  char32_t first, last;
};

const Range NON_PRINTABLE[] = {
#include "py_unicode_tables.inc"
};

bool py_isprintable(char32_t c) {
  if (c < 0x80) return c >= 0x20 && c < 0x7F;
  const Range* end = std::end(NON_PRINTABLE);
  const Range* r = std::upper_bound(std::begin(NON_PRINTABLE), end, c,
                                    [](char32_t v, const Range& range) { return v < range.first; });
  return r == std::begin(NON_PRINTABLE) || c > (r - 1)->last;
}

bool line_break(char32_t c) {
  return (c >= 0x0A && c <= 0x0D) || (c >= 0x1C && c <= 0x1E) || c == 0x85 || c == 0x2028 || c == 0x2029;
}

void append_escape(std::u32string& out, const char* format, char32_t c) {
  char buffer[16];
  std::snprintf(buffer, sizeof buffer, format, unsigned(c));
  out += ascii_u32(buffer);
}

// The backslash escapes of repr() and json.dumps: the quote, the backslash and those of `letters` (of "tnrbf").
bool append_short_escape(std::u32string& out, char32_t c, char32_t quote, std::u32string_view letters) {
  static const std::u32string_view RAW = U"\t\n\r\b\f", LETTER = U"tnrbf";
  const size_t k = RAW.find(c);
  if (c != quote && c != U'\\' && (k == RAW.npos || letters.find(LETTER[k]) == letters.npos)) return false;
  out += U'\\';
  out += c == quote || c == U'\\' ? c : LETTER[k];
  return true;
}

}  // namespace

std::u32string to_code_points(std::string_view utf8) {
  std::u32string out;
  for (size_t i = 0; i < utf8.size();) out += char32_t(next_codepoint(utf8, i));
  return out;
}

std::string to_utf8(const std::u32string& text) {
  std::string out;
  for (char32_t c : text) append_utf8(out, c);
  return out;
}

std::u32string ascii_u32(std::string_view ascii) { return std::u32string(ascii.begin(), ascii.end()); }

bool py_isspace(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::u32string py_strip(const std::u32string& text) {
  size_t begin = 0, end = text.size();
  while (begin < end && py_isspace(text[begin])) ++begin;
  while (end > begin && py_isspace(text[end - 1])) --end;
  return text.substr(begin, end - begin);
}

std::u32string py_first_line(const std::u32string& text) {
  return text.substr(0, size_t(std::find_if(text.begin(), text.end(), line_break) - text.begin()));
}

std::vector<std::u32string> py_splitlines(const std::u32string& text) {
  std::vector<std::u32string> lines;
  for (size_t at = 0; at < text.size();) {
    const size_t end = size_t(std::find_if(text.begin() + long(at), text.end(), line_break) - text.begin());
    lines.push_back(text.substr(at, end - at));
    at = end + (end + 1 < text.size() && text[end] == U'\r' && text[end + 1] == U'\n' ? 2 : 1);
  }
  return lines;
}

std::u32string py_repr(const std::u32string& text) {
  const bool single = text.find(U'\'') == std::u32string::npos || text.find(U'"') != std::u32string::npos;
  const char32_t quote = single ? U'\'' : U'"';
  std::u32string out(1, quote);
  for (char32_t c : text) {
    if (append_short_escape(out, c, quote, U"tnr")) continue;
    if (py_isprintable(c)) {
      out += c;
    } else {
      append_escape(out, c < 0x100 ? "\\x%02x" : c < 0x10000 ? "\\u%04x" : "\\U%08x", c);
    }
  }
  return out + quote;
}

std::string json_quote(const std::u32string& text, bool ensure_ascii) {
  std::u32string out = U"\"";
  for (char32_t c : text) {
    if (append_short_escape(out, c, U'"', U"tnrbf")) continue;
    if (c >= 0x20 && (c < 0x7F || !ensure_ascii)) {
      out += c;
    } else if (c < 0x10000) {
      append_escape(out, "\\u%04x", c);
    } else {
      append_escape(out, "\\u%04x", 0xD800 + ((c - 0x10000) >> 10));
      append_escape(out, "\\u%04x", 0xDC00 + ((c - 0x10000) & 0x3FF));
    }
  }
  return to_utf8(out + U"\"");
}

}  // namespace memlora
