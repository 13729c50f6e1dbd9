#include "tokenizer.h"

#include "byte_level.h"
#include "error.h"
#include "json_view.h"
#include "utf8.h"

namespace memlora {
namespace {

void require_byte_level(const JsonView& v, const char* what) {
  if (v.is_null()) v.fail(std::string("no ") + what + " (the core reads byte-level BPE tokenizers)");
  const std::string type = v.at("type").string();
  if (type != "ByteLevel") v.at("type").fail("'" + type + "' is not supported (the core reads byte-level BPE tokenizers)");
}

std::optional<std::string> optional_string(const JsonView& v, const std::string& key) {
  if (!v.has(key) || v.at(key).is_null()) return std::nullopt;
  return v.at(key).string();
}

void require_false(const JsonView& v, const std::string& key) {
  if (v.has(key) && !v.at(key).is_null() && v.at(key).boolean()) v.at(key).fail("true is not supported by the core");
}

std::vector<std::pair<std::string, std::string>> read_merges(const JsonView& merges) {
  std::vector<std::pair<std::string, std::string>> out;
  for (const JsonView& m : merges.items()) {
    if (m.json().is_string()) {  // the older "left right" form
      const std::string s = m.string();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) m.fail("not a pair 'left right'");
      out.emplace_back(s.substr(0, space), s.substr(space + 1));
    } else {
      if (m.items().size() != 2) m.fail("not a pair [left, right]");
      out.emplace_back(m.at(0).string(), m.at(1).string());
    }
  }
  return out;
}

}  // namespace

Tokenizer::Tokenizer(std::vector<AddedToken> added, PreTokenizer pre, Bpe bpe)
    : added_(std::move(added)), pre_(std::move(pre)), bpe_(std::move(bpe)) {
  for (size_t i = 0; i < added_.size(); ++i) added_by_id_[added_[i].id] = i;
}

Tokenizer Tokenizer::from_file(const std::string& path) {
  const Json doc = read_json_file(path);
  JsonView root(doc, path + ": not a tokenizer the core reads");
  if (root.has("normalizer") && !root.at("normalizer").is_null()) {
    root.at("normalizer").fail("normalizers are not supported (the core reads byte-level BPE tokenizers)");
  }
  JsonView pre = root.at("pre_tokenizer");
  require_byte_level(pre, "pre_tokenizer");
  require_byte_level(root.at("decoder"), "decoder");
  JsonView model = root.at("model");
  if (model.at("type").string() != "BPE") model.at("type").fail("'" + model.at("type").string() + "' is not 'BPE'");
  require_false(model, "byte_fallback");
  if (model.has("dropout") && !model.at("dropout").is_null()) model.at("dropout").fail("BPE dropout is not supported");
  for (const char* affix : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (optional_string(model, affix).value_or("") != "") model.at(affix).fail("a non-empty affix is not supported");
  }
  std::unordered_map<std::string, int> vocab;
  for (const auto& [token, id] : model.at("vocab").members()) vocab[token] = int(id.integer());
  BpeOptions options;
  options.unk_token = optional_string(model, "unk_token");
  options.fuse_unk = model.has("fuse_unk") && model.at("fuse_unk").boolean();
  options.ignore_merges = model.has("ignore_merges") && model.at("ignore_merges").boolean();
  Bpe bpe(std::move(vocab), read_merges(model.at("merges")), options, path);

  std::vector<AddedToken> added;
  for (const JsonView& t : root.at("added_tokens").items()) {
    for (const char* flag : {"single_word", "lstrip", "rstrip"}) require_false(t, flag);
    added.push_back({int(t.at("id").integer()), t.at("content").string(), t.at("special").boolean(),
                     t.at("normalized").boolean()});
  }
  const bool add_prefix_space = pre.has("add_prefix_space") && pre.at("add_prefix_space").boolean();
  const bool use_regex = !pre.has("use_regex") || pre.at("use_regex").boolean();
  return Tokenizer(std::move(added), PreTokenizer(add_prefix_space, use_regex, path), std::move(bpe));
}

std::optional<int> Tokenizer::token_to_id(const std::string& token) const {
  for (const AddedToken& t : added_) {
    if (t.content == token) return t.id;
  }
  return bpe_.id(token);
}

void Tokenizer::split_added(std::string_view text, bool normalized, std::vector<int>& ids) const {
  size_t start = 0;  // the unmatched text since the last match
  for (size_t i = 0; i < text.size();) {
    const AddedToken* best = nullptr;
    for (const AddedToken& t : added_) {
      if (t.normalized == normalized && !t.content.empty() && text.compare(i, t.content.size(), t.content) == 0 &&
          (best == nullptr || t.content.size() > best->content.size())) {
        best = &t;
      }
    }
    if (best == nullptr) {
      ++i;
      continue;
    }
    const std::string_view before = text.substr(start, i - start);
    if (!normalized) split_added(before, true, ids); else encode_plain(before, ids);
    ids.push_back(best->id);
    i += best->content.size();
    start = i;
  }
  const std::string_view rest = text.substr(start);
  if (!normalized) split_added(rest, true, ids); else encode_plain(rest, ids);
}

void Tokenizer::encode_plain(std::string_view text, std::vector<int>& ids) const {
  if (text.empty()) return;
  for (const std::string& piece : pre_.split(text)) bpe_.encode(piece, ids);
}

std::vector<int> Tokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  split_added(text, false, ids);  // non-normalized added tokens first, then normalized ones in what is left
  return ids;
}

std::string Tokenizer::decode(const std::vector<int>& ids, bool skip_special_tokens) const {
  std::string bytes;
  for (int id : ids) {
    auto added = added_by_id_.find(id);
    if (added != added_by_id_.end()) {
      if (!(skip_special_tokens && added_[added->second].special)) bytes += alphabet_to_bytes(added_[added->second].content);
    } else if (const std::string* token = bpe_.token(id)) {
      bytes += alphabet_to_bytes(*token);
    }
  }
  return utf8_lossy(bytes);
}

}  // namespace memlora
