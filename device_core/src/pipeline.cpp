#include "pipeline.h"

#include <algorithm>
#include <map>

#include "parse.h"
#include "py_text.h"
#include "trace.h"

namespace memlora {

std::optional<std::string> skipped_reason(const std::string& status) {
  if (status == "malformed") return "malformed model output";
  if (status == "too_long") return "longer than the model's context";
  return std::nullopt;
}

namespace {

const Retrieval& retrieval_of(const Bundle& bundle) {
  if (!bundle.manifest.retrieval) {
    throw Error(bundle.file(MANIFEST) + ": no prompts.retrieval (bundles of memlora 0.4.0 lack it): export the "
                "bundle again");
  }
  return *bundle.manifest.retrieval;
}

std::vector<std::string> utf8_all(const std::vector<std::u32string>& texts) {
  std::vector<std::string> out;
  for (const std::u32string& t : texts) out.push_back(to_utf8(t));
  return out;
}

}  // namespace

MemoryPipeline::MemoryPipeline(const Bundle& bundle, const Tokenizer& tokenizer, Backend& backend,
                               TextEmbedder& embedder, MemoryStore& store, std::string trace)
    : bundle_(bundle),
      tokenizer_(tokenizer),
      backend_(backend),
      embedder_(embedder),
      store_(store),
      trace_(std::move(trace)),
      prompts_(bundle),
      retrieval_(retrieval_of(bundle)),
      eos_ids_(bundle.manifest.model.special.eos_ids.begin(), bundle.manifest.model.special.eos_ids.end()) {}

Generation MemoryPipeline::run(const std::string& op, const std::string& prompt, int shown) {
  const Operation& settings = bundle_.operation(op);
  const GenerationConfig config{settings.max_new_tokens, settings.stop, bundle_.manifest.trace_top_k};
  const Constraint constraint = bundle_.constraint(table_name(op, shown));
  Generation g = generate(backend_, tokenizer_, tokenizer_.encode(prompt), settings.adapter, config, eos_ids_, op,
                          &constraint);
  if (!trace_.empty()) append_trace(trace_, g.record);
  return g;
}

ExchangeResult MemoryPipeline::ingest(const std::string& key, const std::vector<Turn>& turns) {
  std::vector<std::string> turn_ids;
  for (const Turn& t : turns) turn_ids.push_back(t.turn_id);
  if (store_.is_done(key)) return {key, "done_before", {}, {}, "", turn_ids};

  const auto skip = [&](const std::string& status, const std::optional<std::vector<std::string>>& facts,
                        const std::optional<std::string>& op = std::nullopt,
                        const std::optional<std::string>& raw = std::nullopt, const std::string& error = "") {
    if (!store_.record_skipped(key, turn_ids, status, facts, op, raw,
                               error.empty() ? std::nullopt : std::optional<std::string>(error))) {
      return ExchangeResult{key, "done_before", {}, {}, "", turn_ids};
    }
    return ExchangeResult{key, status, facts.value_or(std::vector<std::string>()), {}, op ? *op + ": " + error : error,
                          turn_ids};
  };

  std::string raw;
  try {
    raw = run("extract", prompts_.extract(turns)).record.text;
  } catch (const PromptTooLong& e) {
    return skip("too_long", std::nullopt, "extract", std::nullopt, e.what());
  }
  std::vector<std::string> facts;
  try {
    facts = utf8_all(parse_facts(to_code_points(raw)));
  } catch (const MalformedOutput& e) {
    return skip("malformed", std::nullopt, "extract", raw, to_utf8(e.reason));
  }
  if (facts.empty()) return skip("no_facts", facts);

  const std::vector<StoredMemory> shown = related(embedder_.embed(facts));
  std::set<std::u32string> known_ids;
  for (size_t i = 0; i < shown.size(); ++i) known_ids.insert(to_code_points(std::to_string(i)));
  try {
    raw = run("mem_update", prompts_.update(facts, shown), int(shown.size())).record.text;
  } catch (const PromptTooLong& e) {
    return skip("too_long", facts, "mem_update", std::nullopt, e.what());
  }
  std::vector<MemoryEvent> events;
  try {
    events = parse_update(to_code_points(raw), known_ids);
  } catch (const MalformedOutput& e) {
    return skip("malformed", facts, "mem_update", raw, to_utf8(e.reason));
  }

  std::vector<std::string> new_texts;
  for (const MemoryEvent& e : events) {
    if (e.event == "ADD" || e.event == "UPDATE") new_texts.push_back(to_utf8(e.text));
  }
  std::vector<std::vector<float>> vectors = new_texts.empty() ? std::vector<std::vector<float>>() : embedder_.embed(new_texts);
  std::vector<Change> changes;
  size_t next_vector = 0;
  for (const MemoryEvent& e : events) {
    const bool embedded = e.event == "ADD" || e.event == "UPDATE";
    changes.push_back({e.event, e.has_id ? shown[std::stoul(to_utf8(e.id))].id : "", to_utf8(e.text),
                       embedded ? vectors[next_vector++] : std::vector<float>()});
  }
  const auto ids = store_.apply(key, turn_ids, turns.front().date, facts, changes);
  if (!ids) return {key, "done_before", {}, {}, "", turn_ids};
  ExchangeResult result{key, "applied", facts, {}, "", turn_ids};
  size_t k = 0;
  for (const Change& c : changes) {
    if (c.event != "NONE") result.events.emplace_back(c.event, (*ids)[k++]);
  }
  return result;
}

std::vector<StoredMemory> MemoryPipeline::related(const std::vector<std::vector<float>>& fact_vectors) {
  // the union of each fact's top-k, each memory at its best score, in first-seen order before the stable sort
  std::vector<StoredMemory> best;
  std::map<std::string, size_t> index;
  for (const std::vector<float>& v : fact_vectors) {
    for (const StoredMemory& m : store_.search(v, retrieval_.top_k)) {
      const auto found = index.find(m.id);
      if (found == index.end()) {
        index[m.id] = best.size();
        best.push_back(m);
      } else if (m.score > best[found->second].score) {
        best[found->second] = m;
      }
    }
  }
  std::stable_sort(best.begin(), best.end(), [](const StoredMemory& a, const StoredMemory& b) { return a.score > b.score; });
  if (best.size() > size_t(retrieval_.max_shown)) best.resize(size_t(retrieval_.max_shown));
  return best;
}

Answer MemoryPipeline::answer(const std::string& question) {
  Answer a;
  a.memories = store_.search(embedder_.embed({question}).front(), retrieval_.answer_k);
  a.generation = run("answer", prompts_.answer(question, a.memories));
  a.text = to_utf8(parse_answer(to_code_points(a.generation.record.text)));
  return a;
}

}  // namespace memlora
