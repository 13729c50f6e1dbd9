// The forward pass of a runtime the app drives itself -- Core ML on iOS (a stateful multifunction package, one
// function per adapter), ONNX Runtime -- behind `Backend`, so the decode loop, constraints, prompts, parser and
// store stay the core's while the app owns the model. The contract (positions, adapters, vocabulary) is checked
// by `Backend::forward` before the app is called; the app keeps its KV cache as the contract describes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "backend.h"
#include "bundle.h"

namespace memlora {

// Runs `count` tokens at positions start .. start+count-1 with `adapter` active (nullptr: the base model) and
// writes the last position's `vocab` logits; 0, or non-zero with a one-line message (NUL-terminated, at most
// `message_size` bytes) in `message`. memlora_core.h declares the same type for the apps.
using ForwardFn = int (*)(void* context, const int32_t* tokens, int32_t count, int32_t start, const char* adapter,
                          float* logits, int32_t vocab, char* message, int32_t message_size);

class CallbackBackend : public Backend {
 public:
  // `target`: the bundle's target the app runs (its name in the manifest's targets); the adapters, context and
  // vocabulary are the manifest's.
  CallbackBackend(const Bundle& bundle, const std::string& target, ForwardFn forward, void* context);

  const std::string& name() const override { return name_; }
  const std::vector<std::string>& adapters() const override { return adapters_; }
  int max_context() const override { return max_context_; }
  int vocab() const override { return vocab_; }

 protected:
  std::vector<float> run(const std::vector<int>& tokens, int start, const AdapterName& adapter) override;

 private:
  std::string name_;
  std::vector<std::string> adapters_;
  int max_context_ = 0;
  int vocab_ = 0;
  ForwardFn forward_;
  void* context_;
};

// "<what> failed: <the first line the app's callback left in `message`>", or "<what> failed (code N)".
std::string callback_failure(const std::string& what, int code, const std::vector<char>& message);

}  // namespace memlora
