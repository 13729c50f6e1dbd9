// Typed reading of JSON documents (manifest, tokenizer.json, trace records) with one-line errors.
//
// Every value is read through a JsonView that knows where it sits ("model/vocab_size") and which document it
// came from, so a missing or mistyped field is one Error naming the file, the field and the problem, the way
// the Python side reports a schema violation.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace memlora {

using Json = nlohmann::ordered_json;  // ordered: the first bad entry reported is the one the file lists first

// The parsed JSON of a file; Error "<path>: not valid JSON (...)" or "<path>: cannot read ..." otherwise.
Json read_json_file(const std::string& path);

// Reads `text` (e.g. one JSONL line); Error "<where>: not JSON (...)" otherwise.
Json parse_json(const std::string& text, const std::string& where);

class JsonView {
 public:
  // `context` starts every error: "<file>: manifest does not match manifest.schema.json".
  JsonView(const Json& value, std::string context, std::string where = "");

  bool has(const std::string& key) const;
  JsonView at(const std::string& key) const;  // a required member of an object
  JsonView at(size_t index) const;
  bool is_null() const { return value_.is_null(); }

  int64_t integer() const;
  double number() const;
  bool boolean() const;
  std::string string() const;
  std::vector<JsonView> items() const;                              // an array
  std::vector<std::pair<std::string, JsonView>> members() const;    // an object, in file order
  std::vector<int64_t> integers() const;                            // an array of integers
  std::vector<std::string> strings() const;                         // an array of strings

  const Json& json() const { return value_; }
  const std::string& where() const { return where_; }
  [[noreturn]] void fail(const std::string& problem) const;

 private:
  const Json& value_;
  std::string context_;
  std::string where_;
};

}  // namespace memlora
