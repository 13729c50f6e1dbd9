#include "executorch_backend.h"

#include <algorithm>

#include <executorch/extension/module/module.h>
#include <executorch/extension/tensor/tensor_ptr.h>

#include "error.h"
#include "et_log.h"
#include "llm_custom_ops.h"

using executorch::extension::make_tensor_ptr;
using executorch::extension::module::Module;
using EtError = executorch::runtime::Error;
using executorch::runtime::EValue;

namespace memlora {
namespace {

constexpr const char* BASE_METHOD = "forward";

}  // namespace

ExecuTorchBackend::ExecuTorchBackend(const Bundle& bundle) {
  const ExecuTorchTarget& target = bundle.executorch();
  load_llm_custom_ops();
  capture_executorch_log();  // after: the custom ops' Python extension registers a log of its own
  if (target.data_files.size() > 1) {
    throw Error(bundle.path + ": the ExecuTorch runtime takes one data file per program, bundle lists " +
                std::to_string(target.data_files.size()));
  }
  if (target.mode == "separable" && target.graphs.size() != 1) {
    throw Error(bundle.file(MANIFEST) + ": a separable executorch target has one program, this lists " +
                std::to_string(target.graphs.size()));
  }
  for (const auto& [name, rel] : target.graphs) {
    const std::string path = bundle.file(rel);
    if (!target.data_files.empty()) data_files_[path] = bundle.file(target.data_files.front());
    if (target.mode == "separable") {
      auto gate = [&](const AdapterName& adapter) {  // the manifest's gate for `adapter` (none: all zeros)
        std::vector<float> g(target.gate_width, 0.0f);
        if (adapter) {
          auto span = target.gate_spans.find(*adapter);
          if (span == target.gate_spans.end()) {
            throw Error(bundle.file(MANIFEST) + ": executorch gates list no span for adapter '" + *adapter + "'");
          }
          std::fill(g.begin() + span->second.first, g.begin() + span->second.second, 1.0f);
        }
        return target.gate_width ? g : std::vector<float>();
      };
      routes_[std::nullopt] = Route{path, BASE_METHOD, gate(std::nullopt)};
      for (const auto& [adapter, method] : target.methods) routes_[adapter] = Route{path, method, gate(adapter)};
    } else {
      routes_[name == "base" ? AdapterName() : AdapterName(name)] = Route{path, BASE_METHOD};
    }
  }
  for (const auto& [adapter, route] : routes_) {
    if (adapter) adapters_.push_back(*adapter);
  }
  const std::string& first = routes_.begin()->second.program;
  max_context_ = int(constant(first, "get_max_seq_len"));
  vocab_ = int(constant(first, "get_vocab_size"));
}

ExecuTorchBackend::~ExecuTorchBackend() = default;

Module& ExecuTorchBackend::program(const std::string& path) {
  auto it = programs_.find(path);
  if (it != programs_.end()) return *it->second;
  auto data = data_files_.find(path);
  // methods of one program share its planned memory, as the export planned their KV cache (one buffer)
  auto module = data == data_files_.end()
                    ? std::make_unique<Module>(path, Module::LoadMode::Mmap, nullptr, nullptr, nullptr, true)
                    : std::make_unique<Module>(path, data->second, Module::LoadMode::Mmap, nullptr, nullptr, nullptr, true);
  const EtError loaded = module->load();
  if (loaded != EtError::Ok) {
    const std::string what = data == data_files_.end() ? path : path + " (data " + data->second + ")";
    throw Error(what + ": ExecuTorch cannot load this program (" + executorch_why(loaded) + ")");
  }
  return *programs_.emplace(path, std::move(module)).first->second;
}

int64_t ExecuTorchBackend::constant(const std::string& path, const std::string& method) {
  auto out = program(path).execute(method);
  if (!out.ok() || out->empty() || !(*out)[0].isInt()) {
    throw Error(path + ": program has no readable " + method + " metadata method" +
                (out.ok() ? "" : " (" + executorch_why(out.error()) + ")"));
  }
  return (*out)[0].toInt();
}

Module& ExecuTorchBackend::method(const Route& route) {
  Module& module = program(route.program);
  if (!module.is_method_loaded(route.method)) {
    const EtError loaded = module.load_method(route.method);
    if (loaded != EtError::Ok) {
      auto data = data_files_.find(route.program);
      throw Error((data == data_files_.end() ? route.program : data->second) + ": ExecuTorch cannot load method '" +
                  route.method + "' (" + executorch_why(loaded) + "); the program or its weight data is corrupt or does not belong to it");
    }
  }
  return module;
}

void ExecuTorchBackend::preload() {
  for (const auto& [adapter, route] : routes_) method(route);
}

std::vector<float> ExecuTorchBackend::run(const std::vector<int>& tokens, int start, const AdapterName& adapter) {
  const Route& route = routes_.at(adapter);
  Module& module = method(route);
  auto ids = make_tensor_ptr({1, int(tokens.size())}, std::vector<int64_t>(tokens.begin(), tokens.end()));
  auto pos = make_tensor_ptr({1}, std::vector<int64_t>{start});
  std::vector<EValue> inputs{EValue(ids), EValue(pos)};
  auto gate = route.gate.empty() ? nullptr : make_tensor_ptr({int(route.gate.size())}, std::vector<float>(route.gate));
  if (gate) inputs.emplace_back(gate);
  auto out = module.execute(route.method, inputs);
  if (!out.ok() || out->empty() || !(*out)[0].isTensor()) {
    throw Error(route.program + ": method '" + route.method + "' failed at start " + std::to_string(start) +
                (out.ok() ? " (no logits)" : " (" + executorch_why(out.error()) + ")"));
  }
  const auto& logits = (*out)[0].toTensor();
  if (logits.scalar_type() != executorch::aten::ScalarType::Float || logits.numel() != vocab_) {
    throw Error(route.program + ": method '" + route.method + "' did not return float32 logits for the " +
                std::to_string(vocab_) + " token ids");
  }
  const float* data = logits.const_data_ptr<float>();
  return std::vector<float>(data, data + vocab_);
}

}  // namespace memlora
