// The JSON values memlora/parse.py and memlora/conversations.py see, decoded as Python's json module decodes
// them (its C scanner: the same accepted language -- NaN, Infinity, big integers, duplicate keys replacing in
// place -- and the same error messages at the same code point offsets), with Python's str() and repr() of each
// value.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace memlora {

struct PyValue {
  enum class Kind { None, Bool, Int, Float, Str, List, Dict };
  Kind kind = Kind::None;
  bool boolean = false;
  std::u32string text;          // Str: the string; Int: its digits (Python's int is unbounded)
  double number = 0;            // Float
  std::vector<PyValue> items;   // List, or Dict values
  std::vector<std::u32string> keys;  // Dict keys, in insertion order

  const PyValue* get(const std::u32string& key) const;  // Dict lookup; nullptr when absent
};

// json.JSONDecodeError's msg and pos, or RecursionError (too_deep), or int()'s ValueError (msg, no pos)
struct JsonDecodeError {
  std::string msg;
  size_t pos = 0;
  bool too_deep = false;
  bool value_error = false;
};

// json.JSONDecoder().raw_decode(text): the value starting at text[0] (what follows it is ignored), integers of
// any length. Throws JsonDecodeError.
PyValue py_raw_decode(const std::u32string& text);

// json.loads(text): no leading BOM, whitespace around one value and nothing else; an integer of more than 4300
// digits is Python 3.11's ValueError (its int max str digits). Throws JsonDecodeError.
PyValue py_loads(const std::u32string& text);

// str() of what json.loads(doc) raised: "Expecting value: line 1 column 1 (char 0)", or RecursionError's
// message when `doc` nests too deeply
std::string py_str(const JsonDecodeError& error, const std::u32string& doc);

std::string py_type_name(const PyValue& value);  // type(value).__name__: dict, list, str, int, float, bool, NoneType

std::u32string py_str(const PyValue& value);   // str(value)
std::u32string py_repr(const PyValue& value);  // repr(value)

}  // namespace memlora
