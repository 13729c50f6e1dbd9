#include "json_view.h"

#include <fstream>
#include <sstream>

#include "error.h"

namespace memlora {

Json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot read (no such file or not readable)");
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return Json::parse(buffer.str());
  } catch (const Json::exception& e) {
    throw Error(path + ": not valid JSON (" + e.what() + ")");
  }
}

Json parse_json(const std::string& text, const std::string& where) {
  try {
    return Json::parse(text);
  } catch (const Json::exception& e) {
    throw Error(where + ": not JSON (" + e.what() + ")");
  }
}

JsonView::JsonView(const Json& value, std::string context, std::string where)
    : value_(value), context_(std::move(context)), where_(std::move(where)) {}

void JsonView::fail(const std::string& problem) const {
  throw Error(context_ + " at " + (where_.empty() ? "(top level)" : where_) + ": " + problem);
}

bool JsonView::has(const std::string& key) const { return value_.is_object() && value_.contains(key); }

JsonView JsonView::at(const std::string& key) const {
  if (!value_.is_object()) fail("not an object");
  auto it = value_.find(key);
  if (it == value_.end()) fail("'" + key + "' is a required property");
  return JsonView(*it, context_, where_.empty() ? key : where_ + "/" + key);
}

JsonView JsonView::at(size_t index) const {
  if (!value_.is_array() || index >= value_.size()) fail("no item " + std::to_string(index));
  return JsonView(value_[index], context_, where_ + "/" + std::to_string(index));
}

int64_t JsonView::integer() const {
  if (!value_.is_number_integer()) fail(value_.dump() + " is not of type 'integer'");
  return value_.get<int64_t>();
}

double JsonView::number() const {
  if (!value_.is_number()) fail(value_.dump() + " is not of type 'number'");
  return value_.get<double>();
}

bool JsonView::boolean() const {
  if (!value_.is_boolean()) fail(value_.dump() + " is not of type 'boolean'");
  return value_.get<bool>();
}

std::string JsonView::string() const {
  if (!value_.is_string()) fail(value_.dump() + " is not of type 'string'");
  return value_.get<std::string>();
}

std::vector<JsonView> JsonView::items() const {
  if (!value_.is_array()) fail(value_.dump().substr(0, 60) + " is not of type 'array'");
  std::vector<JsonView> out;
  for (size_t i = 0; i < value_.size(); ++i) out.emplace_back(value_[i], context_, where_ + "/" + std::to_string(i));
  return out;
}

std::vector<std::pair<std::string, JsonView>> JsonView::members() const {
  if (!value_.is_object()) fail(value_.dump().substr(0, 60) + " is not of type 'object'");
  std::vector<std::pair<std::string, JsonView>> out;
  for (auto it = value_.begin(); it != value_.end(); ++it) {
    out.emplace_back(it.key(), JsonView(it.value(), context_, where_.empty() ? it.key() : where_ + "/" + it.key()));
  }
  return out;
}

std::vector<int64_t> JsonView::integers() const {
  std::vector<int64_t> out;
  for (const auto& item : items()) out.push_back(item.integer());
  return out;
}

std::vector<std::string> JsonView::strings() const {
  std::vector<std::string> out;
  for (const auto& item : items()) out.push_back(item.string());
  return out;
}

}  // namespace memlora
