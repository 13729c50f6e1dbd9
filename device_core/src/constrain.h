// Decode-time output constraints (docs/constraints.md; memlora/constrain.py): the bundle's constraint file
// (memlora-constraints/1) read and checked, and each table's step rule -- which token ids may come next with
// the budget left, and the state after a token -- so every output is complete JSON (or one line) ending on eos.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace memlora {

inline constexpr const char* CONSTRAINTS_FORMAT = "memlora-constraints/1";

struct ConstraintTable {
  std::string name;
  int states = 0;
  std::vector<int16_t> next;       // [states * classes]; -1: not allowed
  std::vector<uint16_t> cost;      // fewest tokens that finish from a state, eos included
  std::vector<uint8_t> accepting;  // eos may come now
};

struct Constraints {
  std::vector<uint16_t> class_of;  // the class of each token id below vocab_size
  int classes = 0;
  std::map<std::string, ConstraintTable> tables;
};

// The file at `path`, checked as Constraints.from_bytes checks it; Error "<path>: ..." otherwise.
std::shared_ptr<const Constraints> load_constraints(const std::string& path);

// "mem_update/<memories shown>" for an update, else the operation's name (constrain.table_name)
std::string table_name(const std::string& op, int shown);

// One table's automaton over token ids (constrain.Constraint); states are ints, start 0.
class Constraint {
 public:
  Constraint(std::shared_ptr<const Constraints> constraints, const std::string& name);  // Error if no such table
  const std::string& name() const { return table_->name; }
  int needs(int state) const { return table_->cost[size_t(state)]; }
  bool accepts(int state) const { return table_->accepting[size_t(state)] != 0; }
  // the allowed id with the largest logit (the lowest among equal ones) when `remaining` tokens are left (this
  // one and eos included): ids whose next state can finish in remaining - 1, eos ids exactly when accepting
  int choose(const std::vector<float>& logits, int state, int remaining, const std::vector<int>& eos_ids) const;
  int advance(int state, int token) const;  // Error if `token` is not allowed in `state`

 private:
  std::shared_ptr<const Constraints> constraints_;
  const ConstraintTable* table_;
};

}  // namespace memlora
