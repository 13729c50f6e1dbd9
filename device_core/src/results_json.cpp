#include "results_json.h"

#include <map>

namespace memlora {

namespace {

Json optional_json(const std::optional<std::string>& v) { return v ? Json(*v) : Json(nullptr); }

}  // namespace

double per_second(int count, double seconds) { return seconds > 0 ? count / seconds : 0.0; }

Json memories_json(const std::vector<StoredMemory>& memories, bool scores) {
  Json out = Json::array();
  for (const StoredMemory& m : memories) {
    out.push_back({{"id", m.id}, {"text", m.text}, {"date", m.date}});
    if (scores) out.back()["score"] = double(m.score);
  }
  return out;
}

Json store_json(MemoryStore& store, bool history) {
  Json rows = Json::array(), exchanges = Json::array();
  for (const HistoryRow& h : store.history()) {
    rows.push_back({{"seq", h.seq}, {"memory_id", h.memory_id}, {"event", h.event}, {"old_text", optional_json(h.old_text)},
                    {"new_text", optional_json(h.new_text)}, {"date", h.date}, {"turn_ids", h.turn_ids}, {"exchange", h.exchange}});
  }
  for (const ExchangeRow& x : store.exchanges()) {
    exchanges.push_back({{"key", x.key}, {"status", x.status}, {"turn_ids", x.turn_ids}, {"facts", optional_json(x.facts)},
                         {"failed_op", optional_json(x.failed_op)}, {"raw_output", optional_json(x.raw_output)},
                         {"error", optional_json(x.error)}});
  }
  return {{"memories", memories_json(store.memories(), false)}, {"history", history ? rows : Json(nullptr)},
          {"exchanges", exchanges}};
}

Json ingest_json(MemoryStore& store, const std::vector<ExchangeResult>& results) {
  Json exchanges = Json::array();
  std::map<std::string, int> statuses;
  for (const ExchangeResult& r : results) {
    Json events = Json::array();
    for (const auto& [event, id] : r.events) events.push_back({{"event", event}, {"id", id}});
    exchanges.push_back({{"key", r.key}, {"status", r.status}, {"facts", r.facts}, {"events", events},
                         {"error", r.error}, {"turn_ids", r.turn_ids}});
    ++statuses[r.status];
  }
  return {{"store", store.path}, {"exchanges", exchanges}, {"statuses", statuses},
          {"memories", store.memories().size()}};
}

Json answer_json(const Answer& answer) {
  const TraceRecord& r = answer.generation.record;
  return {{"answer", answer.text}, {"memories", memories_json(answer.memories, true)},
          {"adapter", r.adapter ? Json(*r.adapter) : Json(nullptr)}, {"prompt_tokens", r.prompt_ids.size()},
          {"decode_steps", answer.generation.decode_steps},
          {"prefill_tokens_per_second", per_second(int(r.prompt_ids.size()), answer.generation.prefill_seconds)},
          {"decode_tokens_per_second", per_second(answer.generation.decode_steps, answer.generation.decode_seconds)}};
}

}  // namespace memlora
