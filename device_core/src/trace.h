// Trace records (memlora/schemas/trace.schema.json): one generation call each, one JSON object per line.
// The core reads the bundle's golden records with them and writes device traces `memlora parity --trace`
// replays against the reference.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "backend.h"
#include "json_view.h"

namespace memlora {

inline constexpr const char* TRACE_SCHEMA = "memlora-trace/1";

// The top-k of one decode step, best first (ties on the lower id), logits rounded to 5 decimals.
struct TopK {
  std::vector<int> ids;
  std::vector<double> logits;
};

struct TraceRecord {
  std::string backend;
  std::string op;
  AdapterName adapter;
  std::vector<int> prompt_ids;
  std::vector<int> output_ids;  // without the end-of-sequence token
  std::string stop_reason;      // "eos" | "stop" | "length"
  std::vector<TopK> topk;       // one per decode step (an "eos" record has one more than output_ids)
  std::string text;
  std::optional<std::string> constraint;  // the output constraint's table, none when unconstrained

  Json to_json() const;
};

struct NumberedRecord {
  int line;  // 1-based line of the trace file
  TraceRecord record;
};

// The records of a JSONL trace file, each checked for the fields the core reads; Error
// "<file>:<line>: trace record does not match trace.schema.json at <field>: <problem>".
std::vector<NumberedRecord> read_trace_file(const std::string& path);

// Appends `record` as one line to the JSONL file at `path` (created if missing), flushed, as
// memlora.trace.TraceWriter does, so a killed process keeps whole records.
void append_trace(const std::string& path, const TraceRecord& record);

// The top `k` of `logits` (k capped at their number).
TopK top_k(const std::vector<float>& logits, int k);

}  // namespace memlora
