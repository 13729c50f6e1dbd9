#include "parse.h"

#include <algorithm>

#include "py_json.h"
#include "py_text.h"

namespace memlora {

namespace {

const char* const EVENTS[] = {"ADD", "UPDATE", "DELETE", "NONE"};

std::u32string u(const std::string& ascii) { return ascii_u32(ascii); }

MalformedOutput malformed(const std::string& ascii) { return MalformedOutput(u(ascii)); }

PyValue first_json_object(const std::u32string& text) {
  const size_t start = text.find(U'{');
  if (start == std::u32string::npos) throw malformed("no JSON object in output");
  PyValue obj;
  try {
    obj = py_raw_decode(text.substr(start));
  } catch (const JsonDecodeError& e) {
    if (e.too_deep) throw malformed("JSON nested too deeply");
    throw malformed("invalid JSON: " + e.msg + " at char " + std::to_string(e.pos));
  }
  if (obj.kind != PyValue::Kind::Dict) throw malformed("output JSON is not an object");
  return obj;
}

// the ASCII upper case of `text` if it is one of EVENTS, else "" (no other character upper-cases into a
// letter of an event name without a letter outside them: str.upper() decides the same)
std::string event_name(const std::u32string& text) {
  std::string upper;
  for (char32_t c : text) {
    if (c >= 0x80) return "";
    upper += char(c >= U'a' && c <= U'z' ? c - 32 : c);
  }
  for (const char* e : EVENTS) {
    if (upper == e) return upper;
  }
  return "";
}

}  // namespace

MalformedOutput::MalformedOutput(const std::u32string& r) : Error(to_utf8(r)), reason(r) {}

std::vector<std::u32string> parse_facts(const std::u32string& text) {
  const PyValue obj = first_json_object(text);
  const PyValue* facts = obj.get(U"facts");
  const auto is_str = [](const PyValue& f) { return f.kind == PyValue::Kind::Str; };
  if (!facts || facts->kind != PyValue::Kind::List || !std::all_of(facts->items.begin(), facts->items.end(), is_str)) {
    throw malformed("\"facts\" must be a list of strings");
  }
  std::vector<std::u32string> out;
  for (const PyValue& f : facts->items) {
    std::u32string fact = py_strip(f.text);
    if (!fact.empty() && std::find(out.begin(), out.end(), fact) == out.end()) out.push_back(std::move(fact));
  }
  return out;
}

std::vector<MemoryEvent> parse_update(const std::u32string& text, const std::set<std::u32string>& known_ids) {
  const PyValue obj = first_json_object(text);
  const PyValue* entries = obj.get(U"memory");
  if (!entries || entries->kind != PyValue::Kind::List) throw malformed("\"memory\" must be a list");
  std::vector<MemoryEvent> events;
  std::set<std::u32string> touched;
  const PyValue none;
  for (size_t i = 0; i < entries->items.size(); ++i) {
    const PyValue& e = entries->items[i];
    const std::string at = "memory[" + std::to_string(i) + "]";
    if (e.kind != PyValue::Kind::Dict) throw malformed(at + " is not an object");
    const PyValue* event_value = e.get(U"event");
    MemoryEvent m;
    m.event = event_name(event_value ? py_str(*event_value) : U"");
    if (m.event.empty()) {
      throw MalformedOutput(u(at + ".event ") + py_repr(event_value ? *event_value : none) +
                            U" is not one of ADD, UPDATE, DELETE, NONE");
    }
    const PyValue* mem_text = e.get(U"text");
    if (mem_text && mem_text->kind != PyValue::Kind::Str) throw malformed(at + ".text is not a string");
    if (mem_text) m.text = py_strip(mem_text->text);
    if ((m.event == "ADD" || m.event == "UPDATE") && m.text.empty()) throw malformed(at + " (" + m.event + ") has no text");
    if (m.event != "ADD") {
      const PyValue* id = e.get(U"id");
      m.has_id = true;
      m.id = id ? py_str(*id) : U"";
      if (!known_ids.count(m.id)) throw MalformedOutput(u(at + " (" + m.event + ") refers to unknown id ") + py_repr(m.id));
      if (touched.count(m.id) && m.event != "NONE") throw MalformedOutput(u(at + " changes id ") + py_repr(m.id) + U" twice");
      touched.insert(m.id);
    }
    const PyValue* old = e.get(U"old_memory");
    if (old && old->kind == PyValue::Kind::Str) m.old_memory = old->text;
    events.push_back(std::move(m));
  }
  return events;
}

std::u32string parse_answer(const std::u32string& text) { return py_strip(py_first_line(py_strip(text))); }

}  // namespace memlora
