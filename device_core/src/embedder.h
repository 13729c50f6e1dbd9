// The bundle's retrieval embedder (manifest `embedder`, its executorch target) on ExecuTorch's Module API,
// driven as runtime_py/executorch_embedder.py drives it: the embedder's own WordPiece tokenizer, then one
// program call per text (input_ids and an all-ones attention_mask [1, n] of the entry's input_dtype), whose
// output is the text's mean-pooled, L2-normalised vector [1, dim] (pooling runs inside the program).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "bundle.h"
#include "wordpiece.h"

namespace executorch::extension::module {
class Module;
}

namespace memlora {

// The bundle's retrieval embedder (manifest `embedder`, its executorch target) on the ExecuTorch runtime:
// texts -> unit-length float vectors, one program call per text (max_batch 1).
class TextEmbedder {
 public:
  explicit TextEmbedder(const Bundle& bundle);  // Error naming manifest.json when the bundle has no executorch embedder
  ~TextEmbedder();
  int dim() const;
  std::vector<int64_t> tokenize(const std::string& text) const;  // WordPiece ids, special tokens added, truncated
  std::vector<std::vector<float>> embed(const std::vector<std::string>& texts);  // UTF-8 texts

 private:
  TextEmbedder(const Bundle& bundle, const JsonView& section);
  std::vector<float> embed_one(const std::string& text);

  std::string program_;  // path of the .pte
  bool int32_inputs_ = false;
  int dim_ = 0;
  WordPieceTokenizer tokenizer_;
  std::unique_ptr<executorch::extension::module::Module> module_;
};

}  // namespace memlora
