// The BPE model of a byte-level tokenizer: vocabulary, merge ranks, and the merge loop that turns one
// pre-tokenized piece into ids -- lowest-ranked adjacent pair first, the leftmost of equal ranks, as the
// `tokenizers` library merges.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace memlora {

struct BpeOptions {
  std::optional<std::string> unk_token;  // characters outside the vocabulary become it; dropped without one
  bool fuse_unk = false;                 // consecutive unknown characters give one unk
  bool ignore_merges = false;            // a piece that is a vocabulary entry is taken whole
};

class Bpe {
 public:
  // `source` names tokenizer.json in errors (a merge of tokens outside the vocabulary).
  Bpe(std::unordered_map<std::string, int> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
      BpeOptions options, const std::string& source);

  // Appends the ids of `piece` (byte-level alphabet characters) to `out`.
  void encode(const std::string& piece, std::vector<int>& out) const;

  std::optional<int> id(const std::string& token) const;
  const std::string* token(int id) const;  // null for an id the vocabulary lacks

 private:
  std::unordered_map<std::string, int> vocab_;
  std::unordered_map<int, std::string> tokens_;
  std::unordered_map<uint64_t, std::pair<int, int>> merges_;  // (left id, right id) -> (rank, merged id)
  BpeOptions options_;
  std::optional<int> unk_id_;

  const std::pair<int, int>* merge(int left, int right) const;
};

}  // namespace memlora
