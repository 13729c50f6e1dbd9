#include "conversation.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>
#include <set>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "error.h"
#include "py_json.h"
#include "py_text.h"
#include "utf8.h"

namespace memlora {

namespace {

// str(), .stem and .suffix of pathlib.Path(p) on POSIX, whose str() starts every message: repeated slashes and
// "." parts dropped, a leading "//" kept.
struct FilePath {
  std::string text, stem, suffix;
};

FilePath file_path(const std::string& p) {
  FilePath out;
  out.text = p.rfind("//", 0) == 0 && p.rfind("///", 0) != 0 ? "//" : p.rfind('/', 0) == 0 ? "/" : "";
  const size_t root = out.text.size();
  std::string name;
  for (size_t at = 0; at <= p.size();) {
    const size_t end = std::min(p.find('/', at), p.size());
    const std::string part = p.substr(at, end - at);
    if (!part.empty() && part != ".") {
      out.text += (out.text.size() > root ? "/" : "") + part;
      name = part;
    }
    at = end + 1;
  }
  if (out.text.empty()) out.text = ".";
  const size_t dot = name.rfind('.');
  const bool has_suffix = dot != std::string::npos && dot > 0 && dot + 1 < name.size();
  out.suffix = has_suffix ? name.substr(dot) : "";
  out.stem = has_suffix ? name.substr(0, dot) : name;
  return out;
}

// _read_text: the file as code points; an OSError's strerror, or the offset of the first byte not UTF-8
std::u32string read_text(const FilePath& path, const std::string& what) {
  const int fd = ::open(path.text.c_str(), O_RDONLY | O_CLOEXEC);
  int error = fd < 0 ? errno : 0;
  std::string bytes;
  char buffer[1 << 16];
  while (fd >= 0) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n > 0) {
      bytes.append(buffer, size_t(n));
    } else if (n == 0 || errno != EINTR) {
      if (n < 0) error = errno;
      break;
    }
  }
  if (fd >= 0) ::close(fd);
  if (error) throw Error(path.text + ": cannot read " + what + " (" + std::strerror(error) + ")");
  const size_t bad = first_invalid_utf8(bytes);
  if (bad != std::string::npos) {
    throw Error(path.text + ": " + what + " is not UTF-8 text (bad byte at offset " + std::to_string(bad) + ")");
  }
  return to_code_points(bytes);
}

// A PCRE2 pattern with Python's str semantics where PCRE2 has them: \d is Unicode's Nd (PCRE2_UCP), and a lone
// surrogate (its 3-byte form is invalid UTF-8 to PCRE2) matches nothing, as it matches no class in Python.
class Regex {
 public:
  explicit Regex(const std::string& pattern) {
    int error;
    PCRE2_SIZE offset;
    code_ = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.c_str()), pattern.size(),
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr);
    if (code_ == nullptr) throw Error("PCRE2 cannot compile " + pattern + " (error " + std::to_string(error) + ")");
  }
  ~Regex() { pcre2_code_free(code_); }
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // The groups of the first match in `text` (re.search; with PCRE2_ANCHORED, re.match), or none.
  std::vector<std::string> search(const std::string& text, uint32_t options = 0) const {
    std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> match(
        pcre2_match_data_create_from_pattern(code_, nullptr), pcre2_match_data_free);
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    const int rc = pcre2_match(code_, subject, text.size(), 0, options, match.get(), nullptr);
    std::vector<std::string> groups;
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(match.get());
    for (int g = 0; g < rc; ++g) groups.push_back(text.substr(ovector[2 * g], ovector[2 * g + 1] - ovector[2 * g]));
    return groups;
  }

 private:
  pcre2_code* code_ = nullptr;
};

// The decimal value Python's int() gives the character `c`, or -1. Unicode encodes the decimal digits (Nd) in
// runs of ten, 0 to 9, so a digit's value is the count of Nd code points right before it, modulo 10.
int decimal_value(char32_t c) {
  static const Regex DIGIT(R"(\p{Nd})");
  const auto is_digit = [](char32_t d) { return !DIGIT.search(to_utf8(std::u32string(1, d)), PCRE2_ANCHORED).empty(); };
  if (c >= U'0' && c <= U'9') return int(c - U'0');
  if (!is_digit(c)) return -1;
  int before = 0;
  while (is_digit(c - char32_t(before) - 1)) ++before;
  return before % 10;
}

// int(digits) as ASCII decimal without leading zeros, so numbers of any length compare exactly (`less`); "" when
// `digits` is empty or holds a character that is no decimal digit.
std::string decimal_digits(const std::u32string& digits) {
  std::string out;
  for (char32_t c : digits) {
    const int v = decimal_value(c);
    if (v < 0) return "";
    if (v > 0 || !out.empty()) out += char('0' + v);
  }
  return digits.empty() ? "" : out.empty() ? "0" : out;
}

bool less(const std::string& a, const std::string& b) { return a.size() != b.size() ? a.size() < b.size() : a < b; }

// display_date's pattern, (\d{1,2})\s+([A-Za-z]+),?\s+(\d{4}), with \s as str.isspace() (py_isspace: PCRE2's \s
// differs on U+001C..U+001F and U+180E) and [A-Za-z] ASCII, as in Python.
constexpr const char* SPACE =
    R"([\t-\r\x{1c}-\x{20}\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000}]+)";

// '1:56 pm on 8 May, 2023' -> '8 May 2023'; text without a date is kept, stripped
std::string display_date(const std::u32string& raw) {
  static const Regex DATE(std::string(R"((\d{1,2}))") + SPACE + R"(([A-Za-z]+),?)" + SPACE + R"((\d{4}))");
  const std::vector<std::string> m = DATE.search(to_utf8(raw));
  return m.empty() ? to_utf8(py_strip(raw)) : m[1] + " " + m[2] + " " + m[3];
}

const PyValue* get(const PyValue& dict, const std::string& key) { return dict.get(ascii_u32(key)); }

// dict.get(key, fallback)
const PyValue& get(const PyValue& dict, const std::string& key, const PyValue& fallback) {
  const PyValue* v = get(dict, key);
  return v ? *v : fallback;
}

PyValue empty(PyValue::Kind kind) {
  PyValue v;
  v.kind = kind;
  return v;
}

const PyValue EMPTY_STR = empty(PyValue::Kind::Str), EMPTY_LIST = empty(PyValue::Kind::List);

bool truthy(const PyValue& v) {
  switch (v.kind) {
    case PyValue::Kind::None: return false;
    case PyValue::Kind::Bool: return v.boolean;
    case PyValue::Kind::Int: return v.text != U"0";
    case PyValue::Kind::Float: return v.number != 0;  // NaN is true
    case PyValue::Kind::Str: return !v.text.empty();
    case PyValue::Kind::List:
    case PyValue::Kind::Dict: break;
  }
  return !v.items.empty();
}

std::string str(const PyValue& v) { return to_utf8(py_str(v)); }

// isinstance(v, str) and v: a speaker's name
bool is_name(const PyValue* v) { return v && v->kind == PyValue::Kind::Str && !v->text.empty(); }

// a list (or the values of a dict) whose items are all of `kind`
bool all_items(const PyValue& container, PyValue::Kind kind) {
  const auto& items = container.items;
  return std::all_of(items.begin(), items.end(), [kind](const PyValue& v) { return v.kind == kind; });
}

// The number of a "session_<digits>" key (re.fullmatch(r"session_\d+", key), then int()), or -1.
int session_number(const std::u32string& key, const FilePath& path) {
  const std::u32string prefix = U"session_";
  if (key.compare(0, prefix.size(), prefix) != 0) return -1;
  const std::string digits = decimal_digits(key.substr(prefix.size()));
  if (digits.empty()) return -1;
  if (less(std::to_string(INT_MAX), digits)) {
    throw Error(path.text + ": " + to_utf8(key) + ": the core reads session numbers up to " + std::to_string(INT_MAX));
  }
  return std::stoi(digits);
}

Turn locomo_turn(const FilePath& path, int session, size_t index, const PyValue& t, const std::string& date) {
  const std::string where = path.text + ": session_" + std::to_string(session) + " turn " + std::to_string(index + 1);
  if (t.kind != PyValue::Kind::Dict) {
    throw Error(where + ": must be an object with speaker and text, not " + py_type_name(t));
  }
  const PyValue* speaker = get(t, "speaker");
  const PyValue& text = get(t, "text", EMPTY_STR);
  if (!is_name(speaker)) throw Error(where + ": 'speaker' must be a name");
  if (text.kind != PyValue::Kind::Str) throw Error(where + ": 'text' must be a string");
  std::u32string content = text.text;
  const PyValue* caption = get(t, "blip_caption");
  if (caption && truthy(*caption)) content += U" [shares a photo: " + py_str(*caption) + U"]";
  const PyValue* dia_id = get(t, "dia_id");
  const std::string turn_id = dia_id ? str(*dia_id) : "D" + std::to_string(session) + ":" + std::to_string(index + 1);
  return {to_utf8(speaker->text), to_utf8(content), date, turn_id};
}

// The checks _observations makes that can raise (the core keeps no observations)
void check_observations(const FilePath& path, int session, const PyValue* raw) {
  if (!raw || !truthy(*raw)) return;
  if (raw->kind != PyValue::Kind::Dict || !all_items(*raw, PyValue::Kind::List)) {
    throw Error(path.text + ": session_" + std::to_string(session) + "_observation must map speakers to lists of facts");
  }
}

Conversation load_locomo(const FilePath& path) {
  const std::u32string text = read_text(path, "LoCoMo conversation");
  PyValue data;
  try {
    data = py_loads(text);
  } catch (const JsonDecodeError& e) {
    throw Error(path.text + ": cannot read LoCoMo conversation (" + py_str(e, text) + ")");
  }
  if (data.kind == PyValue::Kind::List) {
    if (data.items.size() != 1) {
      throw Error(path.text + ": holds " + std::to_string(data.items.size()) + " conversations; pass a file with one");
    }
    PyValue only = std::move(data.items[0]);
    data = std::move(only);
  }
  if (data.kind != PyValue::Kind::Dict) {
    throw Error(path.text + ": not a LoCoMo conversation (top level is " + py_type_name(data) + ")");
  }
  const PyValue& conv = get(data, "conversation", data);
  const PyValue& obs = get(data, "observation", data);
  if (conv.kind != PyValue::Kind::Dict || obs.kind != PyValue::Kind::Dict) {
    throw Error(path.text + ": not a LoCoMo conversation ('conversation' and 'observation' must be objects)");
  }
  for (const char* key : {"speaker_a", "speaker_b"}) {
    if (!is_name(get(conv, key))) {
      throw Error(path.text + ": not a LoCoMo conversation (speaker_a and speaker_b must be names)");
    }
  }
  std::vector<int> numbers;
  for (const std::u32string& key : conv.keys) {
    const int n = session_number(key, path);
    if (n >= 0) numbers.push_back(n);
  }
  std::sort(numbers.begin(), numbers.end());
  Conversation out;
  for (int n : numbers) {
    const std::string name = "session_" + std::to_string(n);
    const PyValue* turns_raw = get(conv, name);
    if (!turns_raw) throw Error(path.text + ": a key names session " + std::to_string(n) + ", but there is no " + name);
    const bool has_turns = truthy(*turns_raw);
    if (has_turns && turns_raw->kind != PyValue::Kind::List) {
      throw Error(path.text + ": " + name + " must be a list of turns, not " + py_type_name(*turns_raw));
    }
    const PyValue& raw_date = get(conv, name + "_date_time", EMPTY_STR);
    if (raw_date.kind != PyValue::Kind::Str || (has_turns && py_strip(raw_date.text).empty())) {
      throw Error(path.text + ": " + name + "_date_time is missing or not text (every memory needs its date)");
    }
    Session session{n, display_date(raw_date.text), {}};
    if (has_turns) {
      for (size_t i = 0; i < turns_raw->items.size(); ++i) {
        session.turns.push_back(locomo_turn(path, n, i, turns_raw->items[i], session.date));
      }
    }
    if (!session.turns.empty()) {
      check_observations(path, n, get(obs, name + "_observation"));
      out.sessions.push_back(std::move(session));
    }
  }
  if (out.sessions.empty()) throw Error(path.text + ": the conversation has no sessions with turns");
  const PyValue& qa = get(data, "qa", EMPTY_LIST);
  if (qa.kind != PyValue::Kind::List || !all_items(qa, PyValue::Kind::Dict)) {
    throw Error(path.text + ": 'qa' must be a list of question objects");
  }
  const PyValue* sample_id = get(data, "sample_id");
  out.id = sample_id ? str(*sample_id) : path.stem;
  return out;
}

Conversation load_jsonl_turns(const FilePath& path) {
  const std::u32string text = read_text(path, "turns file");
  Conversation out{path.stem, {}};
  const std::vector<std::u32string> lines = py_splitlines(text);
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string line_number = std::to_string(i + 1), where = path.text + ":" + line_number;
    if (py_strip(lines[i]).empty()) continue;
    PyValue obj;
    try {
      obj = py_loads(lines[i]);
    } catch (const JsonDecodeError& e) {
      throw Error(where + ": not JSON (" + py_str(e, lines[i]) + ")");
    }
    if (obj.kind != PyValue::Kind::Dict) throw Error(where + ": expected a JSON object with speaker, text and date");
    std::string bad;
    for (const char* key : {"speaker", "text", "date"}) {
      const PyValue* v = get(obj, key);
      if (!v || v->kind != PyValue::Kind::Str || py_strip(v->text).empty()) {
        bad += (bad.empty() ? "'" : ", '") + std::string(key) + "'";
      }
    }
    if (!bad.empty()) {
      throw Error(where + ": " + bad + " missing or not text (every turn needs a speaker, a text and a date, as strings)");
    }
    Turn turn{str(*get(obj, "speaker")), str(*get(obj, "text")), display_date(get(obj, "date")->text),
              "L" + line_number};
    if (out.sessions.empty() || out.sessions.back().date != turn.date) {
      out.sessions.push_back({int(out.sessions.size()) + 1, turn.date, {}});
    }
    out.sessions.back().turns.push_back(std::move(turn));
  }
  if (out.sessions.empty()) throw Error(path.text + ": no turns found");
  return out;
}

// re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part): the two bounds as decimal_digits (hi = lo without "-")
bool parse_part(const std::u32string& part, std::string& lo, std::string& hi) {
  size_t i = 0;
  const auto spaces = [&] {
    while (i < part.size() && py_isspace(part[i])) ++i;
  };
  const auto number = [&](std::string& out) {
    const size_t start = i;
    while (i < part.size() && decimal_value(part[i]) >= 0) ++i;
    out = decimal_digits(part.substr(start, i - start));
    return i > start;
  };
  spaces();
  if (!number(lo)) return false;
  spaces();
  hi = lo;
  if (i < part.size() && part[i] == U'-') {
    ++i;
    spaces();
    if (!number(hi)) return false;
    spaces();
  }
  return i == part.size();
}

// [1, 2, 3, 5] -> "1-3,5"
std::string ranges(const std::vector<int>& numbers) {
  std::string out;
  for (size_t i = 0; i < numbers.size();) {
    size_t j = i;
    while (j + 1 < numbers.size() && numbers[j + 1] == numbers[j] + 1) ++j;
    out += (out.empty() ? "" : ",") + std::to_string(numbers[i]) + (j > i ? "-" + std::to_string(numbers[j]) : "");
    i = j + 1;
  }
  return out;
}

std::string int_list(const std::vector<int>& numbers) {
  std::string out;
  for (int n : numbers) out += (out.empty() ? "" : ", ") + std::to_string(n);
  return "[" + out + "]";
}

}  // namespace

Conversation load_conversation(const std::string& path) {
  const FilePath file = file_path(path);
  return file.suffix == ".jsonl" ? load_jsonl_turns(file) : load_locomo(file);
}

std::vector<int> parse_range(const std::optional<std::string>& spec, const std::vector<int>& available) {
  if (available.empty()) throw Error("the conversation has no sessions");
  if (!spec) return available;
  const std::u32string text = to_code_points(utf8_lossy(*spec));
  const std::string prefix = "--sessions " + to_utf8(py_repr(text)) + ": ";
  const std::string have = "have " + ranges(available);
  const std::string first = std::to_string(available.front()), last = std::to_string(available.back());
  std::set<int> chosen;
  for (size_t at = 0; at <= text.size();) {
    const size_t end = std::min(text.find(U',', at), text.size());
    std::string lo, hi;
    if (!parse_part(text.substr(at, end - at), lo, hi)) {
      throw Error(prefix + "expected numbers and ranges such as 1-3,5");
    }
    at = end + 1;
    if (less(hi, lo)) throw Error(prefix + lo + "-" + hi + " is an empty range (write " + hi + "-" + lo + ")");
    if (less(lo, first) || less(last, hi)) {
      throw Error(prefix + "there is no session " + (less(lo, first) ? lo : hi) + " (" + have + ")");
    }
    const int a = std::stoi(lo), b = std::stoi(hi);  // within the sessions' numbers
    std::vector<int> gaps;
    for (long long n = a; n <= b; ++n) {
      if (!std::binary_search(available.begin(), available.end(), int(n))) gaps.push_back(int(n));
    }
    if (!gaps.empty()) throw Error(prefix + "sessions " + int_list(gaps) + " do not exist (" + have + ")");
    for (int n : available) {
      if (n >= a && n <= b) chosen.insert(n);
    }
  }
  std::vector<int> out;
  for (int n : available) {
    if (chosen.count(n)) out.push_back(n);
  }
  return out;
}

std::vector<Exchange> plan(const Conversation& conv, const std::optional<std::string>& sessions, int window) {
  if (window < 1) throw Error("--window " + std::to_string(window) + ": a window holds at least 1 turn");
  std::vector<int> numbers;
  for (const Session& s : conv.sessions) numbers.push_back(s.number);
  const std::vector<int> chosen = parse_range(sessions, numbers);
  std::vector<Exchange> out;
  for (const Session& s : conv.sessions) {
    if (std::find(chosen.begin(), chosen.end(), s.number) == chosen.end()) continue;
    for (size_t i = 0; i < s.turns.size(); i += size_t(window)) {
      const auto begin = s.turns.begin() + long(i);
      const auto end = s.turns.begin() + long(std::min(i + size_t(window), s.turns.size()));
      out.push_back({conv.id + ":s" + std::to_string(s.number) + ":" + begin->turn_id, std::vector<Turn>(begin, end)});
    }
  }
  return out;
}

}  // namespace memlora
