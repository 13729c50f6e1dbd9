#include "bpe.h"

#include <queue>
#include <tuple>

#include "error.h"
#include "utf8.h"

namespace memlora {
namespace {

uint64_t pair_key(int left, int right) { return uint64_t(uint32_t(left)) << 32 | uint32_t(right); }

struct Symbol {
  int id;
  int prev;
  int next;
  bool removed;
};

}  // namespace

Bpe::Bpe(std::unordered_map<std::string, int> vocab, const std::vector<std::pair<std::string, std::string>>& merges,
         BpeOptions options, const std::string& source)
    : vocab_(std::move(vocab)), options_(std::move(options)) {
  for (const auto& [token, id] : vocab_) tokens_[id] = token;
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [left, right] = merges[rank];
    auto a = vocab_.find(left), b = vocab_.find(right), ab = vocab_.find(left + right);
    if (a == vocab_.end() || b == vocab_.end() || ab == vocab_.end()) {
      throw Error(source + ": merge " + std::to_string(rank) + " ('" + left + "' '" + right +
                  "') uses a token outside the vocabulary");
    }
    merges_.emplace(pair_key(a->second, b->second), std::make_pair(int(rank), ab->second));
  }
  if (options_.unk_token) {
    unk_id_ = id(*options_.unk_token);
    if (!unk_id_) throw Error(source + ": unk_token '" + *options_.unk_token + "' is not in the vocabulary");
  }
}

std::optional<int> Bpe::id(const std::string& token) const {
  auto it = vocab_.find(token);
  return it == vocab_.end() ? std::nullopt : std::optional<int>(it->second);
}

const std::string* Bpe::token(int id) const {
  auto it = tokens_.find(id);
  return it == tokens_.end() ? nullptr : &it->second;
}

const std::pair<int, int>* Bpe::merge(int left, int right) const {
  auto it = merges_.find(pair_key(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void Bpe::encode(const std::string& piece, std::vector<int>& out) const {
  if (options_.ignore_merges) {
    if (auto whole = id(piece)) {
      out.push_back(*whole);
      return;
    }
  }
  std::vector<Symbol> symbols;
  bool pending_unk = false;
  for (const std::string& ch : utf8_chars(piece)) {
    auto found = vocab_.find(ch);
    if (found != vocab_.end()) {
      symbols.push_back({found->second, 0, 0, false});
      pending_unk = false;
    } else if (unk_id_ && !(options_.fuse_unk && pending_unk)) {
      symbols.push_back({*unk_id_, 0, 0, false});
      pending_unk = true;
    }
  }
  const int n = int(symbols.size());
  for (int i = 0; i < n; ++i) {
    symbols[i].prev = i - 1;
    symbols[i].next = i + 1 < n ? i + 1 : -1;
  }
  // (rank, position, merged id), smallest first: the lowest rank, then the leftmost
  using Candidate = std::tuple<int, int, int>;
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
  auto offer = [&](int pos) {
    if (pos < 0 || symbols[pos].next < 0) return;
    if (const auto* m = merge(symbols[pos].id, symbols[symbols[pos].next].id)) queue.emplace(m->first, pos, m->second);
  };
  for (int i = 0; i + 1 < n; ++i) offer(i);
  while (!queue.empty()) {
    const auto [rank, pos, merged] = queue.top();
    queue.pop();
    Symbol& left = symbols[pos];
    if (left.removed || left.next < 0) continue;
    const auto* m = merge(left.id, symbols[left.next].id);
    if (m == nullptr || m->second != merged) continue;  // the pair changed since it was offered
    Symbol& right = symbols[left.next];
    left.id = merged;
    right.removed = true;
    left.next = right.next;
    if (left.next >= 0) symbols[left.next].prev = pos;
    offer(left.prev);
    offer(pos);
  }
  for (const Symbol& s : symbols) {
    if (!s.removed) out.push_back(s.id);
  }
}

}  // namespace memlora
