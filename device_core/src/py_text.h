// Python's str semantics the parser's rules depend on, over code points (std::u32string), so offsets, stripping
// and quoting are those of memlora/parse.py: str.strip(), the first of str.splitlines(), repr() of a str, and
// JSON text as json.dumps writes it (ASCII only, so a lone surrogate a model escaped survives the trip).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace memlora {

std::u32string to_code_points(std::string_view utf8);  // valid UTF-8
std::string to_utf8(const std::u32string& text);       // a lone surrogate as its 3-byte form

bool py_isspace(char32_t c);
std::u32string py_strip(const std::u32string& text);
std::u32string py_first_line(const std::u32string& text);  // text.splitlines()[0]; "" for ""
std::vector<std::u32string> py_splitlines(const std::u32string& text);  // text.splitlines()
std::u32string py_repr(const std::u32string& text);        // repr(text)
std::u32string ascii_u32(std::string_view ascii);
// json.dumps(text), or json.dumps(text, ensure_ascii=False) (only the quote, the backslash and control
// characters escaped) as the prompts write facts and memories
std::string json_quote(const std::u32string& text, bool ensure_ascii = true);

}  // namespace memlora
