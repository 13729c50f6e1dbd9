#include "callback_backend.h"

#include <cstring>

#include "error.h"
#include "json_view.h"

namespace memlora {

std::string callback_failure(const std::string& what, int code, const std::vector<char>& message) {
  std::string text(message.data(), strnlen(message.data(), message.size()));
  text = text.substr(0, text.find('\n'));
  return what + " failed" + (text.empty() ? " (code " + std::to_string(code) + ")" : ": " + text);
}

CallbackBackend::CallbackBackend(const Bundle& bundle, const std::string& target, ForwardFn forward, void* context)
    : name_(target), max_context_(bundle.manifest.model.max_context), vocab_(bundle.manifest.model.vocab_size),
      forward_(forward), context_(context) {
  const std::string manifest = bundle.file(MANIFEST);
  if (forward == nullptr) throw Error("memlora_core_open_with: no forward function for target " + target);
  if (!bundle.manifest.target_modes.count(target)) {
    std::string have;
    for (const auto& [name, _] : bundle.manifest.target_modes) have += (have.empty() ? "" : ", ") + name;
    throw Error(manifest + ": no target '" + target + "' (has: " + have + ")");
  }
  const JsonView root(bundle.manifest.document, manifest + ": manifest does not match manifest.schema.json");
  for (const JsonView& a : root.at("adapters").items()) adapters_.push_back(a.at("name").string());
}

std::vector<float> CallbackBackend::run(const std::vector<int>& tokens, int start, const AdapterName& adapter) {
  const std::vector<int32_t> ids(tokens.begin(), tokens.end());
  std::vector<float> logits(static_cast<size_t>(vocab_));
  std::vector<char> message(512, '\0');
  const int code = forward_(context_, ids.data(), int32_t(ids.size()), start, adapter ? adapter->c_str() : nullptr,
                            logits.data(), vocab_, message.data(), int32_t(message.size()));
  if (code != 0) throw Error(callback_failure(name_ + ": the app's forward pass", code, message));
  return logits;
}

}  // namespace memlora
