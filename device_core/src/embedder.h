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

// One text's `count` WordPiece ids (special tokens added; its attention mask is all ones) through an embedder
// artifact the app runs (the bundle's Core ML or ONNX embedder): writes its `dim` floats, the unit vector; 0, or
// non-zero with a one-line message in `message` (memlora_core.h declares the same type for the apps).
using EmbedFn = int (*)(void* context, const int64_t* ids, int32_t count, float* vector, int32_t dim, char* message,
                        int32_t message_size);

// The bundle's retrieval embedder (manifest `embedder`): texts -> unit-length float vectors, one call per text
// (max_batch 1), on the ExecuTorch runtime or through the app's `EmbedFn`; the tokenizer is the core's either way.
class TextEmbedder {
 public:
  explicit TextEmbedder(const Bundle& bundle);  // Error naming manifest.json when the bundle has no executorch embedder
  // The app runs the embedder of `target`; Error naming manifest.json when the bundle has none for it.
  TextEmbedder(const Bundle& bundle, const std::string& target, EmbedFn embed, void* context);
  ~TextEmbedder();
  int dim() const;
  std::vector<int64_t> tokenize(const std::string& text) const;  // WordPiece ids, special tokens added, truncated
  std::vector<std::vector<float>> embed(const std::vector<std::string>& texts);  // UTF-8 texts

 private:
  TextEmbedder(const Bundle& bundle, const JsonView& section, const std::string& target);
  std::vector<float> embed_one(const std::string& text);
  std::vector<float> run_program(const std::vector<int64_t>& ids);
  std::vector<float> run_app(const std::vector<int64_t>& ids);

  std::string program_;  // path of the .pte
  bool int32_inputs_ = false;
  int dim_ = 0;
  WordPieceTokenizer tokenizer_;
  std::unique_ptr<executorch::extension::module::Module> module_;  // null when the app runs the embedder
  EmbedFn app_ = nullptr;
  void* app_context_ = nullptr;
  std::string target_;
};

}  // namespace memlora
