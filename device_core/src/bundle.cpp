#include "bundle.h"

#include <filesystem>
#include <algorithm>
#include <set>

#include "error.h"
#include "sha256.h"

namespace fs = std::filesystem;

namespace memlora {
namespace {

// Manifest versions of earlier memlora releases, refused with how to re-export (as export/bundle.py does).
const std::map<std::string, std::pair<std::string, std::string>> OLD_VERSIONS = {
    {"memlora-bundle/1", {"0.2", "whose quantization recipes this version cannot read"}},
    {"memlora-bundle/2", {"0.3", "which has no output constraints for this version to decode with"}}};

std::optional<int> optional_int(const JsonView& v, const std::string& key) {
  if (!v.has(key) || v.at(key).is_null()) return std::nullopt;
  return static_cast<int>(v.at(key).integer());
}

ModelFacts read_model(const JsonView& m) {
  ModelFacts facts;
  facts.name = m.at("name").string();
  facts.architecture = m.at("architecture").string();
  facts.vocab_size = static_cast<int>(m.at("vocab_size").integer());
  facts.max_context = static_cast<int>(m.at("max_context").integer());
  JsonView s = m.at("special_tokens");
  facts.special.bos_id = optional_int(s, "bos_id");
  facts.special.pad_id = optional_int(s, "pad_id");
  for (int64_t id : s.at("eos_ids").integers()) facts.special.eos_ids.push_back(static_cast<int>(id));
  if (facts.special.eos_ids.empty()) s.at("eos_ids").fail("[] should be non-empty");
  return facts;
}

Operation read_operation(const JsonView& v) {
  Operation op;
  if (!v.at("adapter").is_null()) op.adapter = v.at("adapter").string();
  op.max_new_tokens = static_cast<int>(v.at("max_new_tokens").integer());
  if (op.max_new_tokens < 1) v.at("max_new_tokens").fail("should be at least 1");
  op.stop = v.at("stop").strings();
  return op;
}

ExecuTorchTarget read_executorch(const JsonView& t) {
  ExecuTorchTarget et;
  et.mode = t.at("mode").string();
  for (const auto& [name, path] : t.at("graphs").members()) et.graphs[name] = path.string();
  if (t.has("methods")) {
    for (const auto& [adapter, method] : t.at("methods").members()) et.methods[adapter] = method.string();
  }
  if (t.has("data_files")) {
    for (const auto& [name, path] : t.at("data_files").members()) et.data_files.push_back(path.string());
  }
  if (et.mode != "merged" && et.mode != "separable") t.at("mode").fail("'" + et.mode + "' is not one of ['merged', 'separable']");
  if (t.has("gates")) {
    const JsonView gates = t.at("gates");
    et.gate_width = static_cast<int>(gates.at("width").integer());
    for (const auto& [adapter, span] : gates.at("adapters").members()) {
      const auto bounds = span.items();
      if (bounds.size() != 2) span.fail("should be [start, stop]");
      const int start = static_cast<int>(bounds[0].integer()), stop = static_cast<int>(bounds[1].integer());
      if (start < 0 || stop <= start || stop > et.gate_width) span.fail("is not a span of the gate's " + std::to_string(et.gate_width) + " columns");
      et.gate_spans[adapter] = {start, stop};
    }
  }
  return et;
}

bool outside(const std::string& rel) {
  if (rel.empty() || rel[0] == '/') return true;
  for (const auto& part : fs::path(rel)) {
    if (part == "..") return true;
  }
  return false;
}

Manifest typed(const Json& doc, const std::string& source) {
  JsonView root(doc, source + ": manifest does not match manifest.schema.json");
  if (!doc.is_object()) root.fail("not an object");
  Manifest m;
  m.memlora_version = root.at("memlora_version").string();
  m.model = read_model(root.at("model"));
  m.tokenizer_dir = root.at("tokenizer").at("dir").string();
  for (const auto& [op, t] : root.at("prompts").at("templates").members()) {
    m.prompts[op] = PromptTemplate{t.at("system").string(), t.at("user").string()};
  }
  if (root.at("prompts").has("chat")) {
    JsonView chat = root.at("prompts").at("chat");
    m.chat = ChatFormat{chat.at("before_system").string(), chat.at("between").string(), chat.at("after_user").string()};
  }
  if (root.at("prompts").has("retrieval")) {
    JsonView r = root.at("prompts").at("retrieval");
    m.retrieval = Retrieval{int(r.at("top_k").integer()), int(r.at("answer_k").integer()), int(r.at("max_shown").integer())};
  }
  JsonView gen = root.at("generation");
  if (gen.at("decoding").string() != "greedy") gen.at("decoding").fail("'greedy' was expected");
  m.trace_top_k = static_cast<int>(gen.at("trace_top_k").integer());
  for (const auto& [op, v] : gen.at("operations").members()) m.operations[op] = read_operation(v);
  for (const auto& [name, t] : root.at("targets").members()) {
    m.target_modes[name] = t.at("mode").string();
    if (name == "executorch") m.executorch = read_executorch(t);
  }
  JsonView golden = root.at("golden");
  m.golden = Golden{golden.at("file").string(), static_cast<int>(golden.at("max_new_tokens").integer()),
                    static_cast<int>(golden.at("records").integer())};
  JsonView constraints = root.at("constraints");
  if (constraints.at("format").string() != CONSTRAINTS_FORMAT) constraints.at("format").fail("'" + std::string(CONSTRAINTS_FORMAT) + "' was expected");
  m.constraints_file = constraints.at("file").string();
  for (const auto& [rel, digest] : root.at("files").members()) {
    if (outside(rel)) throw Error(source + ": lists '" + rel + "', which is outside the bundle");
    m.files.emplace_back(rel, digest.string());
  }
  return m;
}

}  // namespace

const Operation& Bundle::operation(const std::string& op) const {
  auto it = manifest.operations.find(op);
  if (it == manifest.operations.end()) {
    std::string have;
    for (const auto& [name, _] : manifest.operations) have += (have.empty() ? "" : ", ") + name;
    throw Error(file(MANIFEST) + ": no operation '" + op + "' (operations: " + have + ")");
  }
  return it->second;
}

const ExecuTorchTarget& Bundle::executorch() const {
  if (!manifest.executorch) {
    std::string have;
    for (const auto& [name, _] : manifest.target_modes) have += (have.empty() ? "" : ", ") + name;
    throw Error(path + ": bundle has no executorch target (has: " + (have.empty() ? "none" : have) + ")");
  }
  return *manifest.executorch;
}

Constraint Bundle::constraint(const std::string& table) const {
  if (!constraints) constraints = load_constraints(file(manifest.constraints_file));
  try {
    return Constraint(constraints, table);
  } catch (const Error& e) {
    throw Error(file(manifest.constraints_file) + ": " + e.what());
  }
}

Manifest read_manifest(const std::string& dir) {
  const std::string source = dir + "/" + MANIFEST;
  if (!fs::is_regular_file(source)) throw Error(source + ": cannot read bundle manifest (no such file)");
  Json doc = read_json_file(source);
  JsonView root(doc, source + ": manifest does not match manifest.schema.json");
  std::string version = root.at("schema_version").string();
  auto old = OLD_VERSIONS.find(version);
  if (old != OLD_VERSIONS.end()) {
    throw Error(source + ": a bundle of memlora " + old->second.first + " (" + version + "), " + old->second.second +
                "; re-export it with `memlora export ... --out " + dir + "` (export replaces it)");
  }
  if (version != BUNDLE_SCHEMA) root.at("schema_version").fail("'" + std::string(BUNDLE_SCHEMA) + "' was expected");
  Manifest m = typed(doc, source);
  m.document = std::move(doc);
  return m;
}

Bundle load_bundle(const std::string& path, bool verify) {
  std::string dir = path;  // "B/" names the bundle B, as Python's Path does
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  Bundle bundle{dir, read_manifest(dir), nullptr};
  if (!verify) return bundle;
  for (const auto& [rel, expected] : bundle.manifest.files) {
    const std::string f = bundle.file(rel);
    if (!fs::is_regular_file(f)) throw Error(f + ": listed in the manifest but missing from the bundle");
    const std::string actual = sha256_file(f);
    if (actual != expected) {
      throw Error(f + ": sha256 mismatch (manifest " + expected.substr(0, 12) + "..., file " + actual.substr(0, 12) +
                  "...): the file is corrupt or was modified; re-export the bundle");
    }
  }
  std::set<std::string> listed;
  for (const auto& f : bundle.manifest.files) listed.insert(f.first);
  std::vector<std::string> extra;
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    if (!entry.is_regular_file() || entry.path().filename() == MANIFEST) continue;
    const std::string rel = fs::relative(entry.path(), dir).generic_string();
    if (!listed.count(rel)) extra.push_back(rel);
  }
  if (!extra.empty()) {
    std::sort(extra.begin(), extra.end());
    throw Error(bundle.file(extra.front()) + ": not listed in the manifest (bundle was modified)");
  }
  return bundle;
}

}  // namespace memlora
