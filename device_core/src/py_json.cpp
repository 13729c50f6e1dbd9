#include "py_json.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string_view>

#include "py_text.h"

namespace memlora {

namespace {

// Python's C scanner recurses once per nested array or object and stops at the interpreter's recursion limit
// (1000 less the caller's frames); the core stops at a fixed depth inside that margin.
constexpr int MAX_DEPTH = 900;

// sys.get_int_max_str_digits() by default: int() of a longer digit string is a ValueError
constexpr size_t INT_MAX_STR_DIGITS = 4300;

bool ws(char32_t c) { return c == U' ' || c == U'\t' || c == U'\n' || c == U'\r'; }
bool digit(char32_t c) { return c >= U'0' && c <= U'9'; }

int hex_value(char32_t c) {
  if (digit(c)) return int(c - U'0');
  if (c >= U'a' && c <= U'f') return int(c - U'a') + 10;
  if (c >= U'A' && c <= U'F') return int(c - U'A') + 10;
  return -1;
}

// StopIteration(idx): raw_decode turns it into "Expecting value" at idx
JsonDecodeError expecting_value(size_t idx) { return {"Expecting value", idx}; }

class Scanner {
 public:
  // `int_limit`: integers longer than INT_MAX_STR_DIGITS are refused as Python refuses them
  Scanner(const std::u32string& s, bool int_limit) : s_(s), n_(s.size()), int_limit_(int_limit) {}

  PyValue scan(size_t idx, size_t& next, int depth) {
    if (idx >= n_) throw expecting_value(idx);
    PyValue v;
    switch (s_[idx]) {
      case U'"':
        v.kind = PyValue::Kind::Str;
        v.text = scan_string(idx + 1, next);
        return v;
      case U'{':
      case U'[':
        if (depth >= MAX_DEPTH) throw JsonDecodeError{"", idx, true};
        return s_[idx] == U'{' ? object(idx + 1, next, depth + 1) : array(idx + 1, next, depth + 1);
      case U'n':
        if (word(idx, U"null")) return next = idx + 4, v;
        break;
      case U't':
        if (word(idx, U"true")) return next = idx + 4, boolean(true);
        break;
      case U'f':
        if (word(idx, U"false")) return next = idx + 5, boolean(false);
        break;
      case U'N':
        if (word(idx, U"NaN")) return next = idx + 3, floating(std::numeric_limits<double>::quiet_NaN());
        break;
      case U'I':
        if (word(idx, U"Infinity")) return next = idx + 8, floating(INFINITY);
        break;
      case U'-':
        if (word(idx, U"-Infinity")) return next = idx + 9, floating(-INFINITY);
        break;
      default:
        break;
    }
    return number(idx, next);
  }

 private:
  const std::u32string& s_;
  size_t n_;
  bool int_limit_;

  // the C scanner's bounds check (idx + len - 1 < length) and the word
  bool word(size_t idx, const std::u32string& w) const { return s_.compare(idx, w.size(), w) == 0 && idx + w.size() <= n_; }

  static PyValue boolean(bool b) {
    PyValue v;
    v.kind = PyValue::Kind::Bool;
    v.boolean = b;
    return v;
  }

  static PyValue floating(double d) {
    PyValue v;
    v.kind = PyValue::Kind::Float;
    v.number = d;
    return v;
  }

  PyValue number(size_t start, size_t& next) {
    size_t idx = start;
    const size_t end = n_ - 1;
    if (s_[idx] == U'-' && ++idx > end) throw expecting_value(start);
    if (s_[idx] >= U'1' && s_[idx] <= U'9') {
      ++idx;
      while (idx <= end && digit(s_[idx])) ++idx;
    } else if (s_[idx] == U'0') {
      ++idx;
    } else {
      throw expecting_value(start);
    }
    bool is_float = false;
    if (idx < end && s_[idx] == U'.' && digit(s_[idx + 1])) {
      is_float = true;
      idx += 2;
      while (idx <= end && digit(s_[idx])) ++idx;
    }
    if (idx < end && (s_[idx] == U'e' || s_[idx] == U'E')) {
      const size_t e_start = idx++;
      if (idx < end && (s_[idx] == U'-' || s_[idx] == U'+')) ++idx;
      while (idx <= end && digit(s_[idx])) ++idx;
      if (digit(s_[idx - 1])) {
        is_float = true;
      } else {
        idx = e_start;
      }
    }
    next = idx;
    const std::string literal(s_.begin() + long(start), s_.begin() + long(idx));
    if (is_float) return floating(std::strtod(literal.c_str(), nullptr));  // correctly rounded, as float()
    const size_t digits = literal.size() - (literal[0] == '-');
    if (int_limit_ && digits > INT_MAX_STR_DIGITS) {
      const std::string msg = "Exceeds the limit (" + std::to_string(INT_MAX_STR_DIGITS) +
                              " digits) for integer string conversion: value has " + std::to_string(digits) +
                              " digits; use sys.set_int_max_str_digits() to increase the limit";
      throw JsonDecodeError{msg, start, false, true};
    }
    PyValue v;
    v.kind = PyValue::Kind::Int;
    v.text = ascii_u32(literal == "-0" ? "0" : literal);
    return v;
  }

  // scanstring: `end` is the index after the opening quote
  std::u32string scan_string(size_t end, size_t& next_out) {
    const size_t begin = end - 1;
    std::u32string out;
    for (;;) {
      char32_t c = 0;
      size_t next = end;
      for (; next < n_; ++next) {
        c = s_[next];
        if (c == U'"' || c == U'\\') break;
        if (c <= 0x1F) throw JsonDecodeError{"Invalid control character at", next};
      }
      if (!(c == U'"' || c == U'\\')) throw JsonDecodeError{"Unterminated string starting at", begin};
      out.append(s_, end, next - end);
      ++next;
      if (c == U'"') {
        next_out = next;
        return out;
      }
      if (next == n_) throw JsonDecodeError{"Unterminated string starting at", begin};
      c = s_[next];
      if (c != U'u') {
        end = next + 1;
        switch (c) {
          case U'"': case U'\\': case U'/': break;
          case U'b': c = U'\b'; break;
          case U'f': c = U'\f'; break;
          case U'n': c = U'\n'; break;
          case U'r': c = U'\r'; break;
          case U't': c = U'\t'; break;
          default: throw JsonDecodeError{"Invalid \\escape", end - 2};
        }
      } else {
        ++next;
        end = next + 4;
        if (end >= n_) throw JsonDecodeError{"Invalid \\uXXXX escape", next - 1};
        c = hex4(next, end - 5);
        if (c >= 0xD800 && c <= 0xDBFF && end + 6 < n_ && s_[end] == U'\\' && s_[end + 1] == U'u') {
          const char32_t low = hex4(end + 2, end + 1);
          if (low >= 0xDC00 && low <= 0xDFFF) {
            c = 0x10000 + ((c - 0xD800) << 10) + (low - 0xDC00);
            end += 6;
          }
        }
      }
      out += c;
    }
  }

  char32_t hex4(size_t at, size_t error_pos) const {
    char32_t c = 0;
    for (size_t i = at; i < at + 4; ++i) {
      const int h = hex_value(s_[i]);
      if (h < 0) throw JsonDecodeError{"Invalid \\uXXXX escape", error_pos};
      c = (c << 4) | char32_t(h);
    }
    return c;
  }

  void skip_ws(size_t& idx) const {
    while (idx < n_ && ws(s_[idx])) ++idx;
  }

  // The members of an object or the items of an array up to `close`, `item` reading each; idx ends past `close`.
  template <class Item>
  void members(size_t& idx, char32_t close, Item item) {
    skip_ws(idx);
    if (idx >= n_ || s_[idx] != close) {
      for (;;) {
        item(idx);
        skip_ws(idx);
        if (idx < n_ && s_[idx] == close) break;
        if (idx >= n_ || s_[idx] != U',') throw JsonDecodeError{"Expecting ',' delimiter", idx};
        ++idx;
        skip_ws(idx);
      }
    }
    ++idx;
  }

  PyValue object(size_t idx, size_t& next, int depth) {
    PyValue v;
    v.kind = PyValue::Kind::Dict;
    members(idx, U'}', [&](size_t& at) {
      if (at >= n_ || s_[at] != U'"') throw JsonDecodeError{"Expecting property name enclosed in double quotes", at};
      std::u32string key = scan_string(at + 1, at);
      skip_ws(at);
      if (at >= n_ || s_[at] != U':') throw JsonDecodeError{"Expecting ':' delimiter", at};
      ++at;
      skip_ws(at);
      PyValue item = scan(at, at, depth);
      size_t k = 0;
      while (k < v.keys.size() && v.keys[k] != key) ++k;
      if (k < v.keys.size()) {
        v.items[k] = std::move(item);  // a repeated key keeps its place and takes the last value, as dict does
      } else {
        v.keys.push_back(std::move(key));
        v.items.push_back(std::move(item));
      }
    });
    next = idx;
    return v;
  }

  PyValue array(size_t idx, size_t& next, int depth) {
    PyValue v;
    v.kind = PyValue::Kind::List;
    members(idx, U']', [&](size_t& at) { v.items.push_back(scan(at, at, depth)); });
    next = idx;
    return v;
  }
};

// repr(float): the shortest digits that round-trip, fixed notation for exponents -4..15, else d.ddde+XX
std::u32string float_repr(double d) {
  if (std::isnan(d)) return U"nan";
  if (std::isinf(d)) return d > 0 ? U"inf" : U"-inf";
  char buffer[64];
  const auto result = std::to_chars(buffer, buffer + sizeof buffer, d, std::chars_format::scientific);
  const std::string sci(buffer, result.ptr);
  const size_t e = sci.find('e');
  const bool negative = sci[0] == '-';
  std::string digits;
  for (char c : sci.substr(negative, e - negative)) {
    if (c != '.') digits += c;
  }
  const int exponent = std::atoi(sci.c_str() + e + 1);
  const int decpt = exponent + 1;
  std::string out = negative ? "-" : "";
  if (decpt > -4 && decpt <= 16) {
    if (decpt <= 0) {
      out += "0." + std::string(size_t(-decpt), '0') + digits;
    } else if (size_t(decpt) >= digits.size()) {
      out += digits + std::string(size_t(decpt) - digits.size(), '0') + ".0";
    } else {
      out += digits.substr(0, size_t(decpt)) + "." + digits.substr(size_t(decpt));
    }
  } else {
    char exp[16];
    std::snprintf(exp, sizeof exp, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    out += digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "") + exp;
  }
  return ascii_u32(out);
}

}  // namespace

const PyValue* PyValue::get(const std::u32string& key) const {
  for (size_t k = 0; k < keys.size(); ++k) {
    if (keys[k] == key) return &items[k];
  }
  return nullptr;
}

PyValue py_raw_decode(const std::u32string& text) {
  size_t next = 0;
  return Scanner(text, false).scan(0, next, 0);
}

PyValue py_loads(const std::u32string& text) {
  if (!text.empty() && text[0] == 0xFEFF) throw JsonDecodeError{"Unexpected UTF-8 BOM (decode using utf-8-sig)", 0};
  size_t idx = 0;
  while (idx < text.size() && ws(text[idx])) ++idx;
  PyValue value = Scanner(text, true).scan(idx, idx, 0);
  while (idx < text.size() && ws(text[idx])) ++idx;
  if (idx != text.size()) throw JsonDecodeError{"Extra data", idx};
  return value;
}

std::string py_str(const JsonDecodeError& error, const std::u32string& doc) {
  if (error.value_error) return error.msg;
  if (error.too_deep) {
    return std::string("maximum recursion depth exceeded while decoding a JSON ") +
           (doc[error.pos] == U'{' ? "object" : "array") + " from a unicode string";
  }
  const std::u32string_view before = std::u32string_view(doc).substr(0, error.pos);
  const size_t line = size_t(std::count(before.begin(), before.end(), U'\n')) + 1;
  const size_t last_break = before.rfind(U'\n');
  const size_t column = last_break == before.npos ? error.pos + 1 : error.pos - last_break;
  return error.msg + ": line " + std::to_string(line) + " column " + std::to_string(column) + " (char " +
         std::to_string(error.pos) + ")";
}

std::string py_type_name(const PyValue& value) {
  switch (value.kind) {
    case PyValue::Kind::None: return "NoneType";
    case PyValue::Kind::Bool: return "bool";
    case PyValue::Kind::Int: return "int";
    case PyValue::Kind::Float: return "float";
    case PyValue::Kind::Str: return "str";
    case PyValue::Kind::List: return "list";
    case PyValue::Kind::Dict: break;
  }
  return "dict";
}

std::u32string py_str(const PyValue& value) { return value.kind == PyValue::Kind::Str ? value.text : py_repr(value); }

std::u32string py_repr(const PyValue& value) {
  switch (value.kind) {
    case PyValue::Kind::None: return U"None";
    case PyValue::Kind::Bool: return value.boolean ? U"True" : U"False";
    case PyValue::Kind::Int: return value.text;
    case PyValue::Kind::Float: return float_repr(value.number);
    case PyValue::Kind::Str: return py_repr(value.text);
    case PyValue::Kind::List:
    case PyValue::Kind::Dict: break;
  }
  const bool dict = value.kind == PyValue::Kind::Dict;
  std::u32string out = dict ? U"{" : U"[";
  for (size_t i = 0; i < value.items.size(); ++i) {
    if (i) out += U", ";
    if (dict) out += py_repr(value.keys[i]) + U": ";
    out += py_repr(value.items[i]);
  }
  return out + (dict ? U"}" : U"]");
}

}  // namespace memlora
