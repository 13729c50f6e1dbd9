#include "selftest.h"

#include <algorithm>
#include <cmath>
#include <set>

#include "error.h"
#include "generate.h"
#include "trace.h"

namespace memlora {
namespace {

ReplayResult compare(int line, const TraceRecord& expected, const TraceRecord& got) {
  ReplayResult r;
  r.line = line;
  r.op = expected.op;
  r.expected_tokens = int(expected.output_ids.size());
  r.tokens = int(got.output_ids.size());
  const auto& a = expected.output_ids;
  const auto& b = got.output_ids;
  const auto diverge = std::mismatch(a.begin(), a.end(), b.begin(), b.end());
  if (diverge.first != a.end() || diverge.second != b.end()) r.first_divergence = int(diverge.first - a.begin());
  r.expected_stop = expected.stop_reason;
  r.stop = got.stop_reason;
  r.text_equal = expected.text == got.text;
  for (size_t i = 0; i < std::min(expected.topk.size(), got.topk.size()); ++i) {
    if (expected.topk[i].ids != got.topk[i].ids) continue;
    ++r.topk_steps_compared;
    for (size_t k = 0; k < got.topk[i].logits.size(); ++k) {
      r.topk_max_abs = std::max(r.topk_max_abs, std::fabs(expected.topk[i].logits[k] - got.topk[i].logits[k]));
    }
  }
  r.passed = r.first_divergence < 0 && r.stop == r.expected_stop && r.text_equal;
  return r;
}

}  // namespace

bool SelftestReport::passed() const {
  return !records.empty() && std::all_of(records.begin(), records.end(), [](const auto& r) { return r.passed; });
}

Json SelftestReport::to_json() const {
  Json out = Json::array();
  for (const ReplayResult& r : records) {
    out.push_back(Json{{"line", r.line}, {"op", r.op}, {"passed", r.passed}, {"expected_tokens", r.expected_tokens},
                       {"tokens", r.tokens},
                       {"first_divergence", r.first_divergence < 0 ? Json(nullptr) : Json(r.first_divergence)},
                       {"expected_stop", r.expected_stop}, {"stop", r.stop}, {"text_equal", r.text_equal},
                       {"topk_steps_compared", r.topk_steps_compared}, {"topk_max_abs", r.topk_max_abs}});
  }
  return Json{{"golden", golden_file}, {"passed", passed()}, {"records", out},
              {"prompt_tokens", prompt_tokens}, {"prefill_seconds", prefill_seconds},
              {"decode_steps", decode_steps}, {"decode_seconds", decode_seconds},
              {"decode_tokens_per_second", decode_seconds > 0 ? decode_steps / decode_seconds : 0.0}};
}

SelftestReport selftest(const Bundle& bundle, Backend& backend, const Tokenizer& tokenizer) {
  SelftestReport report;
  report.golden_file = bundle.file(bundle.manifest.golden.file);
  const std::set<int> eos(bundle.manifest.model.special.eos_ids.begin(), bundle.manifest.model.special.eos_ids.end());
  const auto records = read_trace_file(report.golden_file);
  if (records.empty()) throw Error(report.golden_file + ": no golden records: nothing to replay");
  for (const auto& [line, expected] : records) {
    const Operation& op = bundle.operation(expected.op);
    const GenerationConfig config{std::min(bundle.manifest.golden.max_new_tokens, op.max_new_tokens), op.stop,
                                  bundle.manifest.trace_top_k};
    const std::optional<Constraint> constraint = expected.constraint ? std::optional<Constraint>(bundle.constraint(*expected.constraint))
                                                                     : std::nullopt;
    const Generation g = generate(backend, tokenizer, expected.prompt_ids, expected.adapter, config, eos, expected.op,
                                  constraint ? &*constraint : nullptr);
    report.records.push_back(compare(line, expected, g.record));
    report.prompt_tokens += int(expected.prompt_ids.size());
    report.prefill_seconds += g.prefill_seconds;
    report.decode_seconds += g.decode_seconds;
    report.decode_steps += g.decode_steps;
  }
  return report;
}

}  // namespace memlora
