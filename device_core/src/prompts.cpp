#include "prompts.h"

#include "error.h"
#include "py_text.h"

namespace memlora {

namespace {

const char* const OPERATIONS[] = {"extract", "mem_update", "answer"};

// Python's str.format(**fields) for the templates' language: {name} and the {{ }} escapes.
std::string format(const std::string& text, const std::map<std::string, std::string>& fields, const std::string& where) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if ((c == '{' || c == '}') && i + 1 < text.size() && text[i + 1] == c) {
      out += c;
      ++i;
    } else if (c == '{') {
      const size_t end = text.find('}', i);
      const std::string name = end == std::string::npos ? "" : text.substr(i + 1, end - i - 1);
      const auto field = fields.find(name);
      if (field == fields.end()) {
        throw Error(where + ": the template names '{" + name + "}', which the device core does not fill in");
      }
      out += field->second;
      i = end;
    } else if (c == '}') {
      throw Error(where + ": a single '}' in the template (write '}}')");
    } else {
      out += c;
    }
  }
  return out;
}

std::string json_text(const std::string& utf8) { return json_quote(to_code_points(utf8), false); }

}  // namespace

PromptBuilder::PromptBuilder(const Bundle& bundle) : manifest_(bundle.file(MANIFEST)), templates_(bundle.manifest.prompts) {
  if (!bundle.manifest.chat) {
    throw Error(manifest_ + ": no prompts.chat (the chat format the device builds its prompts with; bundles of "
                "memlora 0.4.0 lack it): export the bundle again");
  }
  format_ = *bundle.manifest.chat;
  for (const char* op : OPERATIONS) {
    if (!templates_.count(op)) throw Error(manifest_ + ": no prompt template for " + op + " in prompts.templates");
  }
}

std::string PromptBuilder::chat(const std::string& op, const std::map<std::string, std::string>& fields) const {
  const PromptTemplate& t = templates_.at(op);
  return format_.before_system + t.system + format_.between +
         format(t.user, fields, manifest_ + ": prompts.templates." + op + ".user") + format_.after_user;
}

std::string PromptBuilder::extract(const std::vector<Turn>& turns) const {
  std::string lines;
  for (size_t i = 0; i < turns.size(); ++i) lines += (i ? "\n" : "") + turns[i].speaker + ": " + turns[i].text;
  return chat("extract", {{"date", turns.empty() ? "" : turns[0].date}, {"turns", lines}});
}

std::string PromptBuilder::update(const std::vector<std::string>& facts, const std::vector<StoredMemory>& memories) const {
  std::string shown = "[", listed = "[";
  for (size_t i = 0; i < memories.size(); ++i) {
    shown += (i ? ", " : "") + std::string("{\"id\": \"") + std::to_string(i) + "\", \"text\": " + json_text(memories[i].text) + "}";
  }
  for (size_t i = 0; i < facts.size(); ++i) listed += (i ? ", " : "") + json_text(facts[i]);
  return chat("mem_update", {{"memories", shown + "]"}, {"facts", listed + "]"}});
}

std::string PromptBuilder::answer(const std::string& question, const std::vector<StoredMemory>& memories) const {
  std::string lines;
  for (size_t i = 0; i < memories.size(); ++i) lines += (i ? "\n" : "") + ("- (" + memories[i].date + ") " + memories[i].text);
  return chat("answer", {{"memories", memories.empty() ? "- (none)" : lines}, {"question", question}});
}

}  // namespace memlora
