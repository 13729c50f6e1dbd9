#include "wordpiece.h"

#include "error.h"
#include "json_view.h"
#include "py_text.h"

namespace memlora {
namespace {

constexpr const char* WHAT = "the core reads BERT WordPiece tokenizers";

bool flag(const JsonView& v, const std::string& key, bool otherwise) {
  return v.has(key) && !v.at(key).is_null() ? v.at(key).boolean() : otherwise;
}

void require_type(const JsonView& v, const std::string& type) {
  const std::string got = v.at("type").string();
  if (got != type) v.at("type").fail("'" + got + "' is not supported (" + WHAT + ")");
}

BertNormalizer read_normalizer(const JsonView& v) {
  if (v.is_null()) return BertNormalizer{false, false, false, false};
  require_type(v, "BertNormalizer");
  BertNormalizer n;
  n.clean_text = flag(v, "clean_text", true);
  n.handle_chinese_chars = flag(v, "handle_chinese_chars", true);
  n.lowercase = flag(v, "lowercase", true);
  n.strip_accents = flag(v, "strip_accents", n.lowercase);  // null: as lowercase
  return n;
}

// The ids the post-processor puts before and after a single text's ids.
void read_post_processor(const JsonView& v, std::vector<int64_t>& before, std::vector<int64_t>& after) {
  if (v.is_null()) return;
  const std::string type = v.at("type").string();
  if (type == "BertProcessing") {
    before.push_back(v.at("cls").at(1).integer());
    after.push_back(v.at("sep").at(1).integer());
    return;
  }
  require_type(v, "TemplateProcessing");
  bool seen_text = false;
  for (const JsonView& piece : v.at("single").items()) {
    if (piece.has("Sequence")) {
      if (seen_text || piece.at("Sequence").at("id").string() != "A") piece.fail("a single-text template has one $A");
      seen_text = true;
    } else {
      const std::string name = piece.at("SpecialToken").at("id").string();
      for (int64_t id : v.at("special_tokens").at(name).at("ids").integers()) (seen_text ? after : before).push_back(id);
    }
  }
  if (!seen_text) v.at("single").fail("a single-text template has one $A");
}

}  // namespace

WordPieceTokenizer WordPieceTokenizer::from_file(const std::string& path, int truncation) {
  const Json doc = read_json_file(path);
  JsonView root(doc, path + ": not a tokenizer the core reads");
  WordPieceTokenizer t;
  t.normalizer_ = read_normalizer(root.at("normalizer"));
  JsonView pre = root.at("pre_tokenizer");
  if (pre.is_null()) pre.fail(std::string("no pre_tokenizer (") + WHAT + ")");
  require_type(pre, "BertPreTokenizer");
  JsonView model = root.at("model");
  require_type(model, "WordPiece");
  for (const auto& [token, id] : model.at("vocab").members()) t.vocab_[token] = id.integer();
  const std::string unk = model.at("unk_token").string();
  if (!t.vocab_.count(unk)) model.at("unk_token").fail("'" + unk + "' is not in the vocabulary");
  t.unk_id_ = t.vocab_.at(unk);
  t.prefix_ = model.at("continuing_subword_prefix").string();
  t.max_word_chars_ = size_t(model.at("max_input_chars_per_word").integer());
  for (const JsonView& a : root.at("added_tokens").items()) {
    for (const char* option : {"single_word", "lstrip", "rstrip", "normalized"}) {
      if (flag(a, option, false)) a.at(option).fail("true is not supported by the core");
    }
    t.added_.push_back({a.at("id").integer(), a.at("content").string()});
  }
  read_post_processor(root.at("post_processor"), t.before_, t.after_);
  const size_t specials = t.before_.size() + t.after_.size();
  if (truncation < int(specials)) {
    throw Error(path + ": truncation to " + std::to_string(truncation) + " ids leaves no room for the " +
                std::to_string(specials) + " special tokens");
  }
  t.max_text_ids_ = size_t(truncation) - specials;
  return t;
}

void WordPieceTokenizer::encode_word(const std::u32string& word, std::vector<int64_t>& ids) const {
  if (word.size() > max_word_chars_) {
    ids.push_back(unk_id_);
    return;
  }
  std::vector<int64_t> pieces;
  for (size_t start = 0; start < word.size();) {
    size_t end = word.size();
    for (; end > start; --end) {  // the longest piece in the vocabulary first
      auto it = vocab_.find((start > 0 ? prefix_ : "") + to_utf8(word.substr(start, end - start)));
      if (it != vocab_.end()) {
        pieces.push_back(it->second);
        break;
      }
    }
    if (end == start) {  // no piece fits here: the whole word is unknown
      ids.push_back(unk_id_);
      return;
    }
    start = end;
  }
  ids.insert(ids.end(), pieces.begin(), pieces.end());
}

void WordPieceTokenizer::encode_plain(std::string_view text, std::vector<int64_t>& ids) const {
  if (text.empty()) return;
  for (const std::u32string& word : bert_pre_tokenize(normalizer_.normalize(to_code_points(text)))) encode_word(word, ids);
}

std::vector<int64_t> WordPieceTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids;
  size_t start = 0;  // the text since the last added token
  for (size_t i = 0; i < text.size();) {
    const AddedToken* best = nullptr;
    for (const AddedToken& a : added_) {
      if (!a.content.empty() && text.compare(i, a.content.size(), a.content) == 0 &&
          (best == nullptr || a.content.size() > best->content.size())) {
        best = &a;
      }
    }
    if (best == nullptr) {
      ++i;
      continue;
    }
    encode_plain(text.substr(start, i - start), ids);
    ids.push_back(best->id);
    i += best->content.size();
    start = i;
  }
  encode_plain(text.substr(start), ids);
  if (ids.size() > max_text_ids_) ids.resize(max_text_ids_);
  ids.insert(ids.begin(), before_.begin(), before_.end());
  ids.insert(ids.end(), after_.begin(), after_.end());
  return ids;
}

}  // namespace memlora
