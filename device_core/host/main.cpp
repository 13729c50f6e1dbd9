// memlora-core: the host runner of the on-device core -- the same sources an app links, driven from a shell.
// It is the core's own test harness (tests/test_device_core.py) and a tool to check a bundle on a desktop.
//
//   memlora-core version                          schema versions the core reads and writes (JSON)
//   memlora-core sha256 FILE...                   hex sha256 of each file, as sha256sum prints it
//   memlora-core verify --bundle B                manifest and every file's sha256
//   memlora-core tokenize (--bundle B | --tokenizer FILE)     JSONL of strings in, JSONL of id lists out
//   memlora-core detokenize (--bundle B | --tokenizer FILE) [--skip-special]   JSONL of id lists in, strings out
//   memlora-core selftest --bundle B [--json FILE]   replay the golden traces; exit 1 on any mismatch
//   memlora-core generate --bundle B --op OP --prompt-ids 1,2,3 [--max-new-tokens N] [--shown N] [--trace FILE]
//                                                 one generation with the operation's settings, under its
//                                                 constraint (mem_update: for N memories shown); prints its
//                                                 result (JSON); appends its trace record to FILE
//   memlora-core parse --op extract|mem_update|answer   JSONL of {"text", "known_ids"} in, one {"ok": result}
//                                                 or {"error": reason} per line out (memlora/parse.py's rules)
//   memlora-core store --store S [--read-only]    JSONL of store calls in (apply, skip, done, search, dump),
//                                                 one JSON result per line out (memlora/store.py's store)
//   memlora-core plan FILE [--sessions S] [--window N]   the exchanges to ingest from a LoCoMo or JSONL
//                                                 conversation (memlora/ingest.py's plan), one JSON document:
//                                                 [{"key", "turns": [{"speaker", "text", "date", "turn_id"}]}]
//   memlora-core embed --bundle B                 JSONL of strings in, one JSON list of floats (the unit vector
//                                                 of the bundle's retrieval embedder) per line out
//   memlora-core embed-tokenize (--bundle B | --tokenizer FILE --truncation N)   JSONL of strings in, JSONL of
//                                                 the embedder tokenizer's id lists out (special tokens added)
//   memlora-core prompt --bundle B --op OP      JSONL of prompt inputs in ({"turns"}, {"facts", "memories"} or
//                                                 {"question", "memories"}), the prompt's token ids out
//   memlora-core ingest FILE --bundle B --store S [--sessions 1-3] [--window N] [--trace FILE] [--json FILE]
//                                                 the memory pipeline over a conversation (JSONL turns or
//                                                 LoCoMo JSON), as `memlora ingest` runs it; resumable
//   memlora-core ask QUESTION --bundle B --store S [--show-memories] [--trace FILE] [--json FILE]
//   memlora-core memories --store S [--history]   the store as JSON (memories, history, exchanges)
//
// Errors are one line on stderr, "error: <file>: <problem>", with exit code 2 (as the memlora CLI).
#include <algorithm>
#include <climits>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "args.h"
#include "../src/bundle.h"
#include "../src/conversation.h"
#include "../src/embedder.h"
#include "../src/engine.h"
#include "../src/error.h"
#include "../src/executorch_backend.h"
#include "../src/generate.h"
#include "../src/json_view.h"
#include "../src/parse.h"
#include "../src/prompts.h"
#include "../src/py_text.h"
#include "../src/results_json.h"
#include "../src/selftest.h"
#include "../src/sha256.h"
#include "../src/store.h"
#include "../src/tokenizer.h"
#include "../src/wordpiece.h"

using namespace memlora;

namespace {

const char* USAGE = "usage: memlora-core version|sha256|verify|tokenize|detokenize|selftest|generate|parse|store|plan|embed|embed-tokenize|prompt|ingest|ask|memories ... (see device_core/README.md)";

Tokenizer bundle_tokenizer(const Bundle& bundle) {
  return Tokenizer::from_file(bundle.file(bundle.manifest.tokenizer_dir + "/tokenizer.json"));
}

Tokenizer open_tokenizer(const Args& args) {
  if (args.has("tokenizer")) return Tokenizer::from_file(args.required("tokenizer"));
  return bundle_tokenizer(load_bundle(args.required("bundle")));
}

void write_json(const std::string& path, const Json& value) {
  std::ofstream out(path);
  out << value.dump(1) << "\n";
  if (!out) throw Error(path + ": cannot write");
}

std::string fixed(double v, int decimals) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.*f", decimals, v);
  return buffer;
}

int run_selftest(const Args& args) {
  const Bundle bundle = load_bundle(args.required("bundle"));
  const Tokenizer tokenizer = bundle_tokenizer(bundle);
  ExecuTorchBackend backend(bundle);
  backend.preload();
  const SelftestReport report = selftest(bundle, backend, tokenizer);
  int identical = 0;
  for (const ReplayResult& r : report.records) {
    identical += r.passed;
    std::cout << report.golden_file << ":" << r.line << " " << r.op << ": ";
    if (r.passed) {
      std::cout << "identical (" << r.tokens << " tokens, " << r.stop << "; top-k logits within "
                << r.topk_max_abs << " over " << r.topk_steps_compared << " steps)\n";
    } else {
      std::cout << "MISMATCH (" << r.tokens << " tokens, " << r.stop << "; golden " << r.expected_tokens << ", "
                << r.expected_stop << (r.first_divergence >= 0 ? "; first differing token " + std::to_string(r.first_divergence) : "")
                << (r.text_equal ? "" : "; text differs") << ")\n";
    }
  }
  std::cout << "selftest: " << identical << " of " << report.records.size() << " golden records identical; prefill "
            << fixed(per_second(report.prompt_tokens, report.prefill_seconds), 1) << " tok/s, decode "
            << fixed(per_second(report.decode_steps, report.decode_seconds), 1) << " tok/s\n";
  if (args.has("json")) write_json(args.required("json"), report.to_json());
  return report.passed() ? 0 : 1;
}

// One JSON value per input line: strings to ids, or ids to strings.
int tokenize(const Args& args, bool encode) {
  const Tokenizer tokenizer = open_tokenizer(args);
  std::string line;
  for (int n = 1; std::getline(std::cin, line); ++n) {
    const Json value = parse_json(line, "stdin:" + std::to_string(n));
    JsonView v(value, "stdin:" + std::to_string(n) + ": expected " + (encode ? "a JSON string" : "a list of ids"));
    if (encode) {
      std::cout << Json(tokenizer.encode(v.string())).dump() << "\n";
    } else {
      std::vector<int> ids;
      for (int64_t id : v.integers()) ids.push_back(int(id));
      std::cout << Json(tokenizer.decode(ids, args.has("skip-special"))).dump() << "\n";
    }
  }
  return 0;
}

int non_negative(const std::string& text, const std::string& what) {
  size_t used = 0;
  long value = -1;
  try {
    value = std::stol(text, &used);
  } catch (const std::exception&) {
  }
  if (used != text.size() || value < 0 || value > INT32_MAX) throw Error(what + ": '" + text + "' is not a non-negative integer");
  return int(value);
}

// "1,2,3" (commas or spaces)
std::vector<int> parse_ids(const std::string& text) {
  std::vector<int> ids;
  std::string item;
  for (char c : text + ",") {
    if (c == ',' || c == ' ') {
      if (!item.empty()) ids.push_back(non_negative(item, "generate: --prompt-ids"));
      item.clear();
    } else {
      item += c;
    }
  }
  if (ids.empty()) throw Error("generate: --prompt-ids lists no token ids");
  return ids;
}

int run_generate(const Args& args) {
  const Bundle bundle = load_bundle(args.required("bundle"));
  const std::string op = args.required("op");
  const Operation& settings = bundle.operation(op);
  const std::vector<int> prompt = parse_ids(args.required("prompt-ids"));
  const int shown = args.has("shown") ? non_negative(args.required("shown"), "generate: --shown") : 0;
  const Constraint constraint = bundle.constraint(table_name(op, shown));
  GenerationConfig config{settings.max_new_tokens, settings.stop, bundle.manifest.trace_top_k};
  if (args.has("max-new-tokens")) {
    config.max_new_tokens = std::min(config.max_new_tokens, non_negative(args.required("max-new-tokens"), "generate: --max-new-tokens"));
  }
  const Tokenizer tokenizer = bundle_tokenizer(bundle);
  ExecuTorchBackend backend(bundle);
  backend.preload();
  const auto& eos_ids = bundle.manifest.model.special.eos_ids;
  const Generation g = generate(backend, tokenizer, prompt, settings.adapter, config,
                                std::set<int>(eos_ids.begin(), eos_ids.end()), op, &constraint);
  if (args.has("trace")) append_trace(args.required("trace"), g.record);
  std::cout << Json{{"text", g.record.text}, {"output_ids", g.record.output_ids}, {"stop_reason", g.record.stop_reason},
                    {"prefill_tokens_per_second", per_second(int(prompt.size()), g.prefill_seconds)},
                    {"decode_tokens_per_second", per_second(g.decode_steps, g.decode_seconds)}}
                   .dump(-1, ' ', true)
            << "\n";
  return 0;
}

std::string json_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out + "]";
}

// One operation's parse result as JSON: the facts, the events or the answer (strings as json.dumps writes them).
std::string parse_result(const std::string& op, const std::u32string& text, const std::set<std::u32string>& known_ids) {
  if (op == "extract") {
    std::vector<std::string> facts;
    for (const std::u32string& f : parse_facts(text)) facts.push_back(json_quote(f));
    return json_list(facts);
  }
  if (op == "mem_update") {
    std::vector<std::string> events;
    for (const MemoryEvent& e : parse_update(text, known_ids)) {
      events.push_back("{\"event\": \"" + e.event + "\", \"id\": " + (e.has_id ? json_quote(e.id) : "null") +
                       ", \"text\": " + json_quote(e.text) + ", \"old_memory\": " + json_quote(e.old_memory) + "}");
    }
    return json_list(events);
  }
  if (op == "answer") return json_quote(parse_answer(text));
  throw Error("parse: unknown --op '" + op + "' (extract, mem_update or answer)");
}

int run_parse(const Args& args) {
  const std::string op = args.required("op");
  std::string line;
  for (int n = 1; std::getline(std::cin, line); ++n) {
    const std::string where = "stdin:" + std::to_string(n);
    const Json value = parse_json(line, where);
    JsonView v(value, where);
    std::set<std::u32string> known_ids;
    if (value.contains("known_ids")) {
      for (const std::string& id : v.at("known_ids").strings()) known_ids.insert(to_code_points(id));
    }
    const std::u32string text = to_code_points(v.at("text").string());
    std::string result;
    try {
      result = "{\"ok\": " + parse_result(op, text, known_ids) + "}";
    } catch (const MalformedOutput& e) {
      result = "{\"error\": " + json_quote(e.reason) + "}";
    }
    std::cout << result << "\n";
  }
  return 0;
}

std::optional<std::string> optional_string(const JsonView& v, const std::string& key) {
  if (!v.has(key) || v.at(key).is_null()) return std::nullopt;
  return v.at(key).string();
}

std::vector<float> floats(const JsonView& v) {
  std::vector<float> out;
  for (const JsonView& x : v.items()) out.push_back(float(x.number()));
  return out;
}

// One store call: {"call": "apply"|"skip"|"done"|"search"|"dump", ...the arguments of store.py's method}.
Json store_call(MemoryStore& store, const Json& call, const std::string& where) {
  const JsonView v(call, where);
  const std::string name = v.at("call").string();
  if (name == "dump") return store_json(store, true);
  if (name == "search") return memories_json(store.search(floats(v.at("query")), int(v.at("k").integer())), true);
  const std::string key = v.at("key").string();
  if (name == "done") return store.is_done(key);
  const std::vector<std::string> turn_ids = v.at("turn_ids").strings();
  if (name == "skip") {
    std::optional<std::vector<std::string>> facts;
    if (v.has("facts") && !v.at("facts").is_null()) facts = v.at("facts").strings();
    return store.record_skipped(key, turn_ids, v.at("status").string(), facts, optional_string(v, "failed_op"),
                                optional_string(v, "raw_output"), optional_string(v, "error"));
  }
  if (name != "apply") throw Error(where + ": unknown store call '" + name + "'");
  std::vector<Change> changes;
  for (const JsonView& c : v.at("changes").items()) {
    changes.push_back({c.at("event").string(), optional_string(c, "memory_id").value_or(""), c.at("text").string(),
                       c.has("embedding") ? floats(c.at("embedding")) : std::vector<float>()});
  }
  const auto touched = store.apply(key, turn_ids, v.at("date").string(), v.at("facts").strings(), changes);
  return touched ? Json(*touched) : Json(nullptr);
}

int run_store(const Args& args) {
  MemoryStore store(args.required("store"), args.has("read-only"));
  std::optional<MemoryStore::Writer> writer;
  if (!args.has("read-only")) writer.emplace(store);
  std::string line;
  for (int n = 1; std::getline(std::cin, line); ++n) {
    const std::string where = "stdin:" + std::to_string(n);
    std::cout << store_call(store, parse_json(line, where), where).dump() << std::endl;
  }
  return 0;
}

// The exchanges memlora/ingest.py's plan cuts from a conversation file, as one JSON document.
int run_plan(const Args& args) {
  if (args.positional.size() != 1) throw Error("plan: pass one conversation file");
  std::optional<std::string> sessions;
  if (args.has("sessions")) sessions = args.options.at("sessions");  // "" too: parse_range refuses it
  const int window = args.has("window") ? non_negative(args.required("window"), "plan: --window") : 4;
  const auto quote = [](const std::string& utf8) { return json_quote(to_code_points(utf8)); };
  std::vector<std::string> exchanges;
  for (const Exchange& x : plan(load_conversation(args.positional[0]), sessions, window)) {
    std::vector<std::string> turns;
    for (const Turn& t : x.turns) {
      turns.push_back("{\"speaker\": " + quote(t.speaker) + ", \"text\": " + quote(t.text) + ", \"date\": " + quote(t.date) +
                      ", \"turn_id\": " + quote(t.turn_id) + "}");
    }
    exchanges.push_back("{\"key\": " + quote(x.key) + ", \"turns\": " + json_list(turns) + "}");
  }
  std::cout << json_list(exchanges) << "\n";
  return 0;
}

// One JSON string per input line, one result per output line (flushed: a caller may talk line by line).
template <typename F>
int per_line(F answer) {
  std::string line;
  for (int n = 1; std::getline(std::cin, line); ++n) {
    const std::string where = "stdin:" + std::to_string(n);
    const Json value = parse_json(line, where);
    std::cout << answer(JsonView(value, where + ": expected a JSON string").string()).dump() << std::endl;
  }
  return 0;
}

int run_embed(const Args& args, bool vectors) {
  if (!vectors && args.has("tokenizer")) {
    const WordPieceTokenizer tokenizer = WordPieceTokenizer::from_file(
        args.required("tokenizer"), non_negative(args.required("truncation"), "embed-tokenize: --truncation"));
    return per_line([&](const std::string& text) { return Json(tokenizer.encode(text)); });
  }
  TextEmbedder embedder(load_bundle(args.required("bundle")));
  if (!vectors) return per_line([&](const std::string& text) { return Json(embedder.tokenize(text)); });
  return per_line([&](const std::string& text) { return Json(embedder.embed({text}).front()); });
}

// One prompt per input line, as the pipeline builds it: {"turns": [{"speaker", "text", "date"}]} (extract),
// {"facts": [...], "memories": [...]} (mem_update) or {"question", "memories"} (answer); prints its token ids.
int run_prompt(const Args& args) {
  const Bundle bundle = load_bundle(args.required("bundle"));
  const PromptBuilder prompts(bundle);
  const Tokenizer tokenizer = bundle_tokenizer(bundle);
  const std::string op = args.required("op");
  std::string line;
  for (int n = 1; std::getline(std::cin, line); ++n) {
    const std::string where = "stdin:" + std::to_string(n);
    const Json value = parse_json(line, where);
    const JsonView v(value, where);
    std::vector<StoredMemory> memories;
    if (v.has("memories")) {
      for (const JsonView& m : v.at("memories").items()) memories.push_back({m.at("id").string(), m.at("text").string(), m.at("date").string()});
    }
    std::string text;
    if (op == "extract") {
      std::vector<Turn> turns;
      for (const JsonView& t : v.at("turns").items()) turns.push_back({t.at("speaker").string(), t.at("text").string(), t.at("date").string(), ""});
      text = prompts.extract(turns);
    } else if (op == "mem_update") {
      text = prompts.update(v.at("facts").strings(), memories);
    } else if (op == "answer") {
      text = prompts.answer(v.at("question").string(), memories);
    } else {
      throw Error("prompt: unknown --op '" + op + "' (extract, mem_update or answer)");
    }
    std::cout << Json(tokenizer.encode(text)).dump() << "\n";
  }
  return 0;
}

// The pipeline's commands need --store: where the default store lives is the Python CLI's choice, not the device's.
int run_ingest(const Args& args) {
  if (args.positional.size() != 1) throw Error("ingest: pass one conversation FILE (JSONL turns or LoCoMo JSON)");
  const std::string& file = args.positional[0];
  std::optional<std::string> sessions;
  if (args.has("sessions")) sessions = args.options.at("sessions");  // "" too: parse_range refuses it
  const int window = args.has("window") ? non_negative(args.required("window"), "ingest: --window") : 4;
  const std::vector<Exchange> todo = plan(load_conversation(file), sessions, window);  // bad input fails first
  MemoryStore store(args.required("store"));
  Engine engine(args.required("bundle"), true);
  if (args.has("trace")) engine.trace = args.required("trace");
  const std::vector<ExchangeResult> results = engine.ingest(store, todo);
  std::map<std::string, int> counts;
  for (const ExchangeResult& r : results) {
    ++counts[r.status];
    if (const auto why = skipped_reason(r.status)) {
      std::cerr << "warning: " << file << ": turns " << r.turn_ids.front() << ".." << r.turn_ids.back() << " skipped ("
                << *why << "): " << r.error << "\n";
    }
  }
  if (args.has("json")) write_json(args.required("json"), ingest_json(store, results));
  std::string summary;
  for (const auto& [status, n] : counts) summary += (summary.empty() ? "" : ", ") + std::to_string(n) + " " + status;
  std::cout << "exchanges: " << (summary.empty() ? "none" : summary) << "; " << store.memories().size()
            << " memories in " << store.path << "\n";
  return 0;
}

int run_ask(const Args& args) {
  if (args.positional.size() != 1) throw Error("ask: pass one QUESTION");
  MemoryStore store(args.required("store"), true);
  Engine engine(args.required("bundle"), true);
  if (args.has("trace")) engine.trace = args.required("trace");
  const Answer answer = engine.pipeline(store).answer(args.positional[0]);
  if (args.has("json")) write_json(args.required("json"), answer_json(answer));
  if (args.has("show-memories")) {
    for (const StoredMemory& m : answer.memories) {
      std::cout << fixed(m.score, 2) << " " << m.id << " (" << m.date << ") " << m.text << "\n";
    }
  }
  std::cout << answer.text << "\n";
  return 0;
}

int run_memories(const Args& args) {
  MemoryStore store(args.required("store"), true);
  std::cout << store_json(store, args.has("history")).dump(1) << "\n";
  return 0;
}

int run(const Args& args) {
  if (args.command == "version") {
    std::cout << Json{{"bundle_schema", BUNDLE_SCHEMA}}.dump() << "\n";
    return 0;
  }
  if (args.command == "sha256") {
    for (const std::string& f : args.positional) std::cout << sha256_file(f) << "  " << f << "\n";
    return 0;
  }
  if (args.command == "verify") {
    const Bundle bundle = load_bundle(args.required("bundle"));
    std::cout << bundle.path << ": ok (" << bundle.manifest.files.size() << " files checked)\n";
    return 0;
  }
  if (args.command == "tokenize") return tokenize(args, true);
  if (args.command == "detokenize") return tokenize(args, false);
  if (args.command == "selftest") return run_selftest(args);
  if (args.command == "generate") return run_generate(args);
  if (args.command == "parse") return run_parse(args);
  if (args.command == "store") return run_store(args);
  if (args.command == "plan") return run_plan(args);
  if (args.command == "embed") return run_embed(args, true);
  if (args.command == "embed-tokenize") return run_embed(args, false);
  if (args.command == "prompt") return run_prompt(args);
  if (args.command == "ingest") return run_ingest(args);
  if (args.command == "ask") return run_ask(args);
  if (args.command == "memories") return run_memories(args);
  throw Error("unknown command '" + args.command + "'; " + USAGE);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv, {"skip-special", "read-only", "show-memories", "history"}, USAGE));
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
