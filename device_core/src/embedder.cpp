#include "embedder.h"

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>

#include "callback_backend.h"
#include "error.h"
#include "et_log.h"
#include "llm_custom_ops.h"
#include "utf8.h"

using executorch::extension::make_tensor_ptr;
using executorch::extension::module::Module;
using executorch::runtime::EValue;

namespace memlora {
namespace {

constexpr const char* TARGET = "executorch";
constexpr const char* METHOD = "forward";

// The manifest's embedder section, which must have `target` (open_section's check and message).
JsonView section(const Bundle& bundle, const std::string& target) {
  const Json& doc = bundle.manifest.document;
  const JsonView root(doc, bundle.file(MANIFEST) + ": manifest does not match manifest.schema.json");
  const bool has = root.has("embedder") && !root.at("embedder").is_null();
  if (has && root.at("embedder").at("targets").has(target)) return root.at("embedder");
  std::string names;
  if (has) {
    for (const auto& [name, _] : root.at("embedder").at("targets").members()) names += (names.empty() ? "" : ", ") + name;
  }
  throw Error(bundle.file(MANIFEST) + ": no " + target + " embedder (has: " + (has ? names : "none") +
              "); export the bundle without --no-embedder");
}

WordPieceTokenizer read_tokenizer(const Bundle& bundle, const JsonView& section) {
  const JsonView tok = section.at("tokenizer");
  return WordPieceTokenizer::from_file(bundle.file(tok.at("dir").string() + "/tokenizer.json"),
                                       int(tok.at("truncation").integer()));
}

// A [1, n] tensor of `values` as T (the entry's input_dtype); it owns its data, so it must outlive the call.
template <typename T>
executorch::extension::TensorPtr input(const std::vector<int64_t>& values) {
  return make_tensor_ptr({1, int(values.size())}, std::vector<T>(values.begin(), values.end()));
}

}  // namespace

TextEmbedder::TextEmbedder(const Bundle& bundle) : TextEmbedder(bundle, section(bundle, TARGET), TARGET) {
  // as ExecuTorchBackend: the custom ops' Python extension registers a log of its own, so it loads first
  load_llm_custom_ops();
  capture_executorch_log();
  module_ = std::make_unique<Module>(program_, Module::LoadMode::Mmap);
  const auto loaded = module_->load_method(METHOD);
  if (loaded != executorch::runtime::Error::Ok) {
    throw Error(program_ + ": ExecuTorch cannot load this embedder (" + executorch_why(loaded) + ")");
  }
}

TextEmbedder::TextEmbedder(const Bundle& bundle, const std::string& target, EmbedFn embed, void* context)
    : TextEmbedder(bundle, section(bundle, target), target) {
  if (embed == nullptr) throw Error("memlora_core_open_with: no embed function for target " + target);
  app_ = embed;
  app_context_ = context;
}

TextEmbedder::TextEmbedder(const Bundle& bundle, const JsonView& s, const std::string& target)
    : tokenizer_(read_tokenizer(bundle, s)), target_(target) {
  const JsonView entry = s.at("targets").at(target);
  program_ = bundle.file(entry.at("file").string());
  dim_ = int(s.at("dim").integer());
  const std::string dtype = entry.at("input_dtype").string();
  if (dtype != "int64" && dtype != "int32") entry.at("input_dtype").fail("'" + dtype + "' is not int32 or int64");
  int32_inputs_ = dtype == "int32";
}

TextEmbedder::~TextEmbedder() = default;

int TextEmbedder::dim() const { return dim_; }

std::vector<int64_t> TextEmbedder::tokenize(const std::string& text) const {
  return tokenizer_.encode(utf8_lossy(text));  // an app's bytes need not be valid UTF-8
}

std::vector<float> TextEmbedder::embed_one(const std::string& text) {
  const std::vector<int64_t> ids = tokenize(text);
  return app_ ? run_app(ids) : run_program(ids);
}

std::vector<float> TextEmbedder::run_app(const std::vector<int64_t>& ids) {
  std::vector<float> vector(static_cast<size_t>(dim_));
  std::vector<char> message(512, '\0');
  const int code = app_(app_context_, ids.data(), int32_t(ids.size()), vector.data(), dim_, message.data(),
                        int32_t(message.size()));
  if (code != 0) throw Error(callback_failure(program_ + ": the app's " + target_ + " embedder", code, message));
  return vector;
}

std::vector<float> TextEmbedder::run_program(const std::vector<int64_t>& ids) {
  const std::vector<int64_t> mask(ids.size(), 1);  // one text: nothing padded
  const auto id_tensor = int32_inputs_ ? input<int32_t>(ids) : input<int64_t>(ids);
  const auto mask_tensor = int32_inputs_ ? input<int32_t>(mask) : input<int64_t>(mask);
  auto out = module_->execute(METHOD, {EValue(id_tensor), EValue(mask_tensor)});
  if (!out.ok() || out->empty() || !(*out)[0].isTensor()) {
    throw Error(program_ + ": embedder method '" + METHOD + "' failed on " + std::to_string(ids.size()) + " tokens" +
                (out.ok() ? " (no output)" : " (" + executorch_why(out.error()) + ")"));
  }
  const auto& vector = (*out)[0].toTensor();
  if (vector.scalar_type() != executorch::aten::ScalarType::Float || vector.numel() != dim_) {
    throw Error(program_ + ": embedder did not return a float32 vector of the manifest's " + std::to_string(dim_) +
                " dimensions");
  }
  const float* data = vector.const_data_ptr<float>();
  return std::vector<float>(data, data + dim_);
}

std::vector<std::vector<float>> TextEmbedder::embed(const std::vector<std::string>& texts) {
  std::vector<std::vector<float>> out;
  out.reserve(texts.size());
  for (const std::string& text : texts) out.push_back(embed_one(text));
  return out;
}

}  // namespace memlora
