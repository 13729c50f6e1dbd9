// The C API over the core (memlora_core.h): each function parses its JSON request, calls the core, and turns a
// memlora::Error into the error string -- so the apps see exactly the messages the host runner prints.
#include "memlora_core.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "../src/bundle.h"
#include "../src/conversation.h"
#include "../src/engine.h"
#include "../src/constrain.h"
#include "../src/error.h"
#include "../src/executorch_backend.h"
#include "../src/generate.h"
#include "../src/json_view.h"
#include "../src/results_json.h"
#include "../src/selftest.h"
#include "../src/tokenizer.h"
#include "../src/trace.h"

using namespace memlora;

struct memlora_core {
  Engine engine;

  memlora_core(const std::string& dir, bool verify) : engine(dir, verify) {}
  memlora_core(const std::string& dir, bool verify, const std::string& target, ForwardFn forward, EmbedFn embed,
               void* context)
      : engine(dir, verify, target, forward, embed, context) {}
};

namespace {

constexpr int API_VERSION = 2;  // 2: the pipeline functions work

char* copy(const std::string& text) {
  char* out = static_cast<char*>(std::malloc(text.size() + 1));
  if (out != nullptr) std::memcpy(out, text.c_str(), text.size() + 1);
  return out;
}

void report(char** error, const std::string& message) {
  if (error != nullptr) *error = copy(message);
}

// Runs `body`, turning any exception into *error; `failed` is what the function returns then.
template <typename Result, typename Body>
Result guarded(char** error, Result failed, Body body) {
  try {
    return body();
  } catch (const Error& e) {
    report(error, e.what());
  } catch (const std::exception& e) {
    report(error, std::string("memlora_core: internal error: ") + e.what());
  }
  return failed;
}

memlora_core& need(memlora_core* core) {
  if (core == nullptr) throw Error("memlora_core: no bundle is open (the handle is NULL)");
  return *core;
}

Json request(const char* text, const std::string& function) {
  if (text == nullptr) throw Error(function + ": the request is NULL");
  const Json value = parse_json(text, function + " request");
  if (!value.is_object()) throw Error(function + " request: expected a JSON object");
  return value;
}

Json adapter_json(const AdapterName& adapter) { return adapter ? Json(*adapter) : Json(nullptr); }

Json generate(memlora_core& core, const Json& value) {
  const JsonView req(value, "memlora_core_generate request");
  const std::string op = req.at("op").string();
  const Operation& settings = core.engine.bundle.operation(op);
  std::vector<int> prompt;
  for (int64_t id : req.at("prompt_ids").integers()) prompt.push_back(int(id));
  GenerationConfig config{settings.max_new_tokens, settings.stop, core.engine.bundle.manifest.trace_top_k};
  if (req.has("max_new_tokens")) {
    const int64_t budget = req.at("max_new_tokens").integer();
    if (budget < 1) req.at("max_new_tokens").fail("must be a positive integer");
    config.max_new_tokens = int(std::min<int64_t>(config.max_new_tokens, budget));
  }
  const int shown = req.has("shown") ? int(req.at("shown").integer()) : 0;
  const Constraint constraint = core.engine.bundle.constraint(table_name(op, shown));
  const auto& eos = core.engine.bundle.manifest.model.special.eos_ids;
  const std::set<int> eos_ids(eos.begin(), eos.end());
  const Generation g =
      memlora::generate(core.engine.backend(), core.engine.tokenizer, prompt, settings.adapter, config, eos_ids, op, &constraint);
  if (!core.engine.trace.empty()) append_trace(core.engine.trace, g.record);
  return Json{{"op", op}, {"adapter", adapter_json(settings.adapter)}, {"text", g.record.text},
              {"output_ids", g.record.output_ids}, {"stop_reason", g.record.stop_reason},
              {"prompt_tokens", prompt.size()}, {"decode_steps", g.decode_steps},
              {"prefill_tokens_per_second", per_second(int(prompt.size()), g.prefill_seconds)},
              {"decode_tokens_per_second", per_second(g.decode_steps, g.decode_seconds)}};
}

Json info(const memlora_core& core) {
  const Manifest& m = core.engine.bundle.manifest;
  Json operations = Json::object();
  for (const auto& [op, settings] : m.operations) {
    operations[op] = Json{{"adapter", adapter_json(settings.adapter)}, {"max_new_tokens", settings.max_new_tokens}};
  }
  return Json{{"bundle", core.engine.bundle.path}, {"model", m.model.name}, {"backend", core.engine.backend().name()},
              {"adapters", core.engine.backend().adapters()}, {"operations", operations},
              {"max_context", core.engine.backend().max_context()}, {"vocab", core.engine.backend().vocab()},
              {"trace", core.engine.trace.empty() ? Json(nullptr) : Json(core.engine.trace)}};
}

std::optional<std::string> optional_string(const JsonView& req, const std::string& key) {
  if (!req.has(key) || req.at(key).is_null()) return std::nullopt;
  return req.at(key).string();
}

// The turns of a request: "turns" as one exchange per `window` of them, or a conversation "file" (and "sessions").
std::vector<Exchange> exchanges(const JsonView& req) {
  const int window = req.has("window") ? int(req.at("window").integer()) : 4;
  if (window < 1) req.at("window").fail("must be at least 1");
  if (req.has("file")) return plan(load_conversation(req.at("file").string()), optional_string(req, "sessions"), window);
  Conversation conv{req.has("id") ? req.at("id").string() : "app", {}};
  for (const JsonView& t : req.at("turns").items()) {
    const std::string date = t.at("date").string();
    if (conv.sessions.empty() || conv.sessions.back().date != date) {
      conv.sessions.push_back({int(conv.sessions.size()) + 1, date, {}});
    }
    auto& turns = conv.sessions.back().turns;
    turns.push_back({t.at("speaker").string(), t.at("text").string(), date,
                     t.has("turn_id") ? t.at("turn_id").string() : "T" + std::to_string(turns.size() + 1)});
  }
  return plan(conv, std::nullopt, window);
}

Json ingest(memlora_core& core, const Json& value) {
  const JsonView req(value, "memlora_core_ingest request");
  const std::vector<Exchange> todo = exchanges(req);
  MemoryStore store(req.at("store").string());
  return ingest_json(store, core.engine.ingest(store, todo));
}

Json ask(memlora_core& core, const Json& value) {
  const JsonView req(value, "memlora_core_ask request");
  MemoryStore store(req.at("store").string(), true);
  return answer_json(core.engine.pipeline(store).answer(req.at("question").string()));
}

Json memories(const Json& value) {
  const JsonView req(value, "memlora_core_memories request");
  MemoryStore store(req.at("store").string(), true);
  return store_json(store, req.has("history") && req.at("history").boolean());
}

}  // namespace

extern "C" {

char* memlora_core_version(void) {
  return copy(Json{{"api", API_VERSION}, {"bundle_schema", BUNDLE_SCHEMA}, {"trace_schema", TRACE_SCHEMA}}.dump());
}

memlora_core* memlora_core_open(const char* bundle_dir, int verify, char** error) {
  return guarded<memlora_core*>(error, nullptr, [&] {
    if (bundle_dir == nullptr) throw Error("memlora_core_open: the bundle path is NULL");
    return new memlora_core(bundle_dir, verify != 0);
  });
}

memlora_core* memlora_core_open_with(const char* bundle_dir, int verify, const char* target, memlora_forward_fn forward,
                                     memlora_embed_fn embed, void* context, char** error) {
  return guarded<memlora_core*>(error, nullptr, [&] {
    if (bundle_dir == nullptr) throw Error("memlora_core_open_with: the bundle path is NULL");
    if (target == nullptr) throw Error("memlora_core_open_with: the target is NULL");
    return new memlora_core(bundle_dir, verify != 0, target, forward, embed, context);
  });
}

void memlora_core_close(memlora_core* core) { delete core; }

void memlora_core_free(char* text) { std::free(text); }

char* memlora_core_info(memlora_core* core, char** error) {
  return guarded<char*>(error, nullptr, [&] { return copy(info(need(core)).dump()); });
}

char* memlora_core_selftest(memlora_core* core, char** error) {
  return guarded<char*>(error, nullptr, [&] {
    memlora_core& c = need(core);
    return copy(selftest(c.engine.bundle, c.engine.backend(), c.engine.tokenizer).to_json().dump());
  });
}

int memlora_core_trace_to(memlora_core* core, const char* path, char** error) {
  return guarded<int>(error, 1, [&] {
    need(core).engine.trace = path == nullptr ? "" : path;
    return 0;
  });
}

char* memlora_core_generate(memlora_core* core, const char* request_json, char** error) {
  return guarded<char*>(error, nullptr, [&] {
    memlora_core& c = need(core);
    return copy(generate(c, request(request_json, "memlora_core_generate")).dump());
  });
}

char* memlora_core_ingest(memlora_core* core, const char* request_json, char** error) {
  return guarded<char*>(error, nullptr, [&] {
    memlora_core& c = need(core);
    return copy(ingest(c, request(request_json, "memlora_core_ingest")).dump());
  });
}

char* memlora_core_ask(memlora_core* core, const char* request_json, char** error) {
  return guarded<char*>(error, nullptr, [&] {
    memlora_core& c = need(core);
    return copy(ask(c, request(request_json, "memlora_core_ask")).dump());
  });
}

char* memlora_core_memories(memlora_core* core, const char* request_json, char** error) {
  return guarded<char*>(error, nullptr, [&] {
    need(core);
    return copy(memories(request(request_json, "memlora_core_memories")).dump());
  });
}

}  // extern "C"
