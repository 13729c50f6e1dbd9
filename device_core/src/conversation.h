// Conversations to ingest, read as memlora/conversations.py reads them: LoCoMo files (flat, or the official
// nested layout of locomo10.json with one conversation) and JSONL turns; then memlora/ingest.py's plan, the
// windows of turns to ingest, each keyed so an interrupted ingest resumes where it stopped. Every refusal is
// the Python side's MemloraError message word for word.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace memlora {

// Strings are UTF-8 (a lone surrogate a JSON file escaped is kept as its 3-byte form, as py_text's to_utf8).
struct Turn {
  std::string speaker, text, date, turn_id;  // memlora/prompts.py Turn; turn_id is LoCoMo's dia_id or "L<line>"
};

struct Session {
  int number = 0;
  std::string date;  // display_date of the session's date
  std::vector<Turn> turns;
};

struct Conversation {
  std::string id;  // LoCoMo's sample_id, else the file's stem
  std::vector<Session> sessions;  // by number, none empty
};

struct Exchange {
  std::string key;  // "<conversation id>:s<session>:<first turn id>"
  std::vector<Turn> turns;
};

// A ".jsonl" file as JSONL turns (a change of date starts a session), any other as LoCoMo JSON.
Conversation load_conversation(const std::string& path);

// "1-3,5" -> [1, 2, 3, 5] of `available`; none (nullopt) is all. Every session named must exist.
std::vector<int> parse_range(const std::optional<std::string>& spec, const std::vector<int>& available);

// Windows of `window` turns inside each chosen session.
std::vector<Exchange> plan(const Conversation& conv, const std::optional<std::string>& sessions, int window);

}  // namespace memlora
