#include "unicode_data.h"

#include <algorithm>
#include <iterator>

namespace memlora {
namespace {

struct Range {
  char32_t first, last;
};

struct ClassRange {
  char32_t first, last;
  int ccc;
};

struct Mapping {
  char32_t from;
  char32_t to[4];  // zero-padded
};

#include "unicode_data_tables.inc"

template <size_t N>
bool in_ranges(const Range (&table)[N], char32_t c) {
  const Range* r = std::upper_bound(std::begin(table), std::end(table), c,
                                    [](char32_t v, const Range& range) { return v < range.first; });
  return r != std::begin(table) && c <= (r - 1)->last;
}

template <size_t N>
const Mapping* find_mapping(const Mapping (&table)[N], char32_t c) {
  const Mapping* m = std::lower_bound(std::begin(table), std::end(table), c,
                                      [](const Mapping& mapping, char32_t v) { return mapping.from < v; });
  return m != std::end(table) && m->from == c ? m : nullptr;
}

void append_mapping(std::u32string& out, const Mapping& m) {
  for (char32_t t : m.to) {
    if (t == 0) break;
    out += t;
  }
}

int combining_class(char32_t c) {
  const ClassRange* r = std::upper_bound(std::begin(COMBINING_CLASS), std::end(COMBINING_CLASS), c,
                                         [](char32_t v, const ClassRange& range) { return v < range.first; });
  return r != std::begin(COMBINING_CLASS) && c <= (r - 1)->last ? (r - 1)->ccc : 0;
}

// Hangul syllables decompose by arithmetic (Unicode 3.12) into two or three conjoining jamo.
constexpr char32_t S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7;
constexpr int V_COUNT = 21, T_COUNT = 28, S_COUNT = 19 * V_COUNT * T_COUNT;

}  // namespace

bool is_other(char32_t c) { return in_ranges(OTHER, c); }
bool is_punctuation(char32_t c) { return in_ranges(PUNCTUATION, c); }
bool is_nonspacing_mark(char32_t c) { return in_ranges(NONSPACING_MARK, c); }

bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
         c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

std::u32string nfd(const std::u32string& text) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) {
    if (c >= S_BASE && c < S_BASE + S_COUNT) {
      const int s = int(c - S_BASE);
      out += char32_t(L_BASE + s / (V_COUNT * T_COUNT));
      out += char32_t(V_BASE + s % (V_COUNT * T_COUNT) / T_COUNT);
      if (s % T_COUNT) out += char32_t(T_BASE + s % T_COUNT);
    } else if (const Mapping* m = find_mapping(DECOMPOSITION, c)) {
      append_mapping(out, *m);
    } else {
      out += c;
    }
  }
  // canonical ordering: each run of marks with a non-zero class sorted (stably) by class
  for (size_t i = 0; i < out.size();) {
    size_t j = i;
    while (j < out.size() && combining_class(out[j]) != 0) ++j;
    if (j - i > 1) {
      std::stable_sort(out.begin() + i, out.begin() + j,
                       [](char32_t a, char32_t b) { return combining_class(a) < combining_class(b); });
    }
    i = j == i ? i + 1 : j;
  }
  return out;
}

void append_lowercase(std::u32string& out, char32_t c) {
  if (const Mapping* m = find_mapping(LOWERCASE, c)) {
    append_mapping(out, *m);
  } else {
    out += c;
  }
}

}  // namespace memlora
