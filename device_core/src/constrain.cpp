#include "constrain.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>

#include "error.h"
#include "json_view.h"
#include "sha256.h"

namespace memlora {

namespace {

constexpr char MAGIC[] = "MLCONSTR";
constexpr size_t ALIGN = 8;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read constraint file (" + std::strerror(errno) + ")");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// One array of the data section: `count` items of T at spec's offset, of the dtype and shape the header implies.
template <class T>
std::vector<T> array(const std::string& data, const JsonView& spec, const std::string& dtype,
                     const std::vector<int64_t>& shape, const std::string& source) {
  const std::vector<int64_t> got = spec.at("shape").integers();
  if (got != shape) {
    auto list = [](const std::vector<int64_t>& s) {
      std::string out = "[";
      for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
      return out + "]";
    };
    throw Error(source + ": an array has shape " + list(got) + ", the header implies " + list(shape));
  }
  if (spec.at("dtype").string() != dtype) spec.at("dtype").fail("'" + dtype + "' was expected");
  size_t count = 1;
  for (int64_t s : shape) count *= size_t(s);
  const int64_t offset = spec.at("offset").integer();
  if (offset < 0 || size_t(offset) + count * sizeof(T) > data.size()) throw Error(source + ": an array runs past the end of the file");
  std::vector<T> out(count);
  std::memcpy(out.data(), data.data() + offset, count * sizeof(T));  // little-endian, as the hosts the core runs on
  return out;
}

}  // namespace

std::shared_ptr<const Constraints> load_constraints(const std::string& path) {
  const std::string blob = read_file(path);
  if (blob.size() < 12 || blob.compare(0, 8, MAGIC) != 0) throw Error(path + ": not a memlora constraint file");
  uint32_t size = 0;
  std::memcpy(&size, blob.data() + 8, 4);
  if (12 + size_t(size) > blob.size()) throw Error(path + ": constraint header is not valid (it runs past the end of the file)");
  const Json header = parse_json(blob.substr(12, size), path + ": constraint header");
  const JsonView h(header, path + ": constraint header is not valid");
  if (h.at("format").string() != CONSTRAINTS_FORMAT) h.at("format").fail("'" + std::string(CONSTRAINTS_FORMAT) + "' was expected");
  const std::string data = blob.substr((12 + size + ALIGN - 1) / ALIGN * ALIGN);
  Sha256 hash;
  hash.update(data.data(), data.size());
  if (hash.hexdigest() != h.at("data_sha256").string()) throw Error(path + ": constraint tables are corrupt (data_sha256 mismatch)");
  auto c = std::make_shared<Constraints>();
  const int64_t vocab = h.at("vocab_size").integer();
  c->classes = int(h.at("num_classes").integer());
  c->class_of = array<uint16_t>(data, h.at("class_of"), "<u2", {vocab}, path);
  if (!c->class_of.empty() && *std::max_element(c->class_of.begin(), c->class_of.end()) >= c->classes) {
    throw Error(path + ": a token's class is past num_classes (" + std::to_string(c->classes) + ")");
  }
  for (const JsonView& t : h.at("tables").items()) {
    ConstraintTable table;
    table.name = t.at("name").string();
    table.states = int(t.at("states").integer());
    table.next = array<int16_t>(data, t.at("next"), "<i2", {table.states, c->classes}, path);
    table.cost = array<uint16_t>(data, t.at("cost"), "<u2", {table.states}, path);
    table.accepting = array<uint8_t>(data, t.at("accepting"), "|u1", {table.states}, path);
    if (std::any_of(table.next.begin(), table.next.end(), [&](int16_t n) { return n < -1 || n >= table.states; })) {
      throw Error(path + ": table " + table.name + " leads past its " + std::to_string(table.states) + " states");
    }
    c->tables[table.name] = std::move(table);
  }
  return c;
}

std::string table_name(const std::string& op, int shown) { return op == "mem_update" ? op + "/" + std::to_string(shown) : op; }

Constraint::Constraint(std::shared_ptr<const Constraints> constraints, const std::string& name)
    : constraints_(std::move(constraints)) {
  const auto it = constraints_->tables.find(name);
  if (it == constraints_->tables.end()) {
    std::string have;
    for (const auto& [n, _] : constraints_->tables) have += (have.empty() ? "" : ", ") + n;
    throw Error("no output constraint '" + name + "' (have " + have + ")");
  }
  table_ = &it->second;
}

int Constraint::choose(const std::vector<float>& logits, int state, int remaining, const std::vector<int>& eos_ids) const {
  const int classes = constraints_->classes;
  std::vector<char> ok(static_cast<size_t>(classes));
  for (int c = 0; c < classes; ++c) {
    const int n = table_->next[size_t(state) * size_t(classes) + size_t(c)];
    ok[size_t(c)] = n >= 0 && table_->cost[size_t(n)] < remaining;
  }
  const std::vector<uint16_t>& class_of = constraints_->class_of;
  std::vector<char> allowed(logits.size());
  for (size_t t = 0; t < logits.size() && t < class_of.size(); ++t) allowed[t] = ok[class_of[t]];
  for (int e : eos_ids) {
    if (e >= 0 && size_t(e) < allowed.size()) allowed[size_t(e)] = accepts(state);
  }
  // np.argmax over the logits with the others at -inf: the first maximum (0 when nothing is allowed)
  int best = 0;
  float value = -std::numeric_limits<float>::infinity();
  for (size_t t = 0; t < logits.size(); ++t) {
    if (allowed[t] && logits[t] > value) {
      best = int(t);
      value = logits[t];
    }
  }
  return best;
}

int Constraint::advance(int state, int token) const {
  const size_t cls = size_t(token) < constraints_->class_of.size() ? constraints_->class_of[size_t(token)] : 0;
  const int n = table_->next[size_t(state) * size_t(constraints_->classes) + cls];
  if (n < 0) throw Error("constraint " + name() + ": token " + std::to_string(token) + " is not allowed in state " + std::to_string(state));
  return n;
}

}  // namespace memlora
