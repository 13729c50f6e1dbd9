#include "trace.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <numeric>

#include "error.h"

namespace memlora {
namespace {

// Python's round(v, 5): the double nearest the correctly rounded 5-decimal value.
double round5(float v) {
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.5f", double(v));
  return std::strtod(buffer, nullptr);
}

std::vector<int> ids_of(const JsonView& v) {
  std::vector<int> out;
  for (const JsonView& item : v.items()) {
    const int64_t id = item.integer();
    if (id < 0) item.fail(std::to_string(id) + " is less than the minimum of 0");
    out.push_back(int(id));
  }
  return out;
}

TraceRecord record_of(const JsonView& v) {
  TraceRecord r;
  if (v.at("schema").string() != TRACE_SCHEMA) v.at("schema").fail("'" + std::string(TRACE_SCHEMA) + "' was expected");
  r.backend = v.at("backend").string();
  r.op = v.at("op").string();
  if (!v.at("adapter").is_null()) r.adapter = v.at("adapter").string();
  r.prompt_ids = ids_of(v.at("prompt_ids"));
  if (r.prompt_ids.empty()) v.at("prompt_ids").fail("[] should be non-empty");
  r.output_ids = ids_of(v.at("output_ids"));
  r.stop_reason = v.at("stop_reason").string();
  if (r.stop_reason != "eos" && r.stop_reason != "stop" && r.stop_reason != "length") {
    v.at("stop_reason").fail("'" + r.stop_reason + "' is not one of ['eos', 'stop', 'length']");
  }
  for (const JsonView& step : v.at("topk").items()) {
    TopK t{ids_of(step.at("ids")), {}};
    for (const JsonView& x : step.at("logits").items()) t.logits.push_back(x.number());
    r.topk.push_back(std::move(t));
  }
  r.text = v.at("text").string();
  if (v.has("constraint") && !v.at("constraint").is_null()) r.constraint = v.at("constraint").string();
  return r;
}

}  // namespace

Json TraceRecord::to_json() const {
  Json steps = Json::array();
  for (const TopK& t : topk) steps.push_back(Json{{"ids", t.ids}, {"logits", t.logits}});
  return Json{{"schema", TRACE_SCHEMA}, {"backend", backend}, {"op", op},
              {"adapter", adapter ? Json(*adapter) : Json(nullptr)}, {"prompt_ids", prompt_ids},
              {"output_ids", output_ids}, {"stop_reason", stop_reason}, {"topk", steps}, {"text", text},
              {"constraint", constraint ? Json(*constraint) : Json(nullptr)}};
}

std::vector<NumberedRecord> read_trace_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read trace file");
  std::vector<NumberedRecord> records;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n);
    const Json doc = parse_json(line, where);
    records.push_back({n, record_of(JsonView(doc, where + ": trace record does not match trace.schema.json"))});
  }
  return records;
}

void append_trace(const std::string& path, const TraceRecord& record) {
  std::ofstream out(path, std::ios::app | std::ios::binary);
  out << record.to_json().dump(-1, ' ', true) << "\n" << std::flush;
  if (!out) throw Error(path + ": cannot write trace file");
}

TopK top_k(const std::vector<float>& logits, int k) {
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  const size_t n = std::min(order.size(), size_t(std::max(k, 0)));
  std::partial_sort(order.begin(), order.begin() + n, order.end(),
                    [&](int a, int b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  TopK out;
  for (size_t i = 0; i < n; ++i) {
    out.ids.push_back(order[i]);
    out.logits.push_back(round5(logits[order[i]]));
  }
  return out;
}

}  // namespace memlora
