// The ExecuTorch target of a bundle behind `Backend`, on ExecuTorch's C++ Module API -- the programs and
// methods runtime_py/executorch_backend.py drives, driven the same way.
//
// Each adapter is a route, a (program, method, gate) triple. A separable bundle has one program with one
// method, `forward`, holding every adapter stacked behind a gate input (its XNNPACK delegates, and so the
// packed base weights, exist once); a merged bundle has one self-contained program per adapter (`base` = no
// adapter), each run through its `forward`. Every method takes (tokens [1, T] int64, input_pos [1] int64[,
// gate [width] float]) and returns the last position's logits [1, vocab]; its KV cache is a buffer inside
// the program, written in place at positions >= input_pos.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "backend.h"
#include "bundle.h"

namespace executorch::extension::module {
class Module;
}

namespace memlora {

class ExecuTorchBackend : public Backend {
 public:
  // Opens the bundle's executorch target (programs loaded, methods on first use).
  explicit ExecuTorchBackend(const Bundle& bundle);
  ~ExecuTorchBackend() override;

  const std::string& name() const override { return name_; }
  const std::vector<std::string>& adapters() const override { return adapters_; }
  int max_context() const override { return max_context_; }
  int vocab() const override { return vocab_; }

  // Loads every route's method now rather than on first use (memory for all adapters at once; a timed run
  // then measures the forward pass alone).
  void preload();

 protected:
  std::vector<float> run(const std::vector<int>& tokens, int start, const AdapterName& adapter) override;

 private:
  struct Route {
    std::string program;  // path of the .pte
    std::string method;
    std::vector<float> gate;  // empty: the method takes no gate
  };
  executorch::extension::module::Module& program(const std::string& path);
  executorch::extension::module::Module& method(const Route& route);  // the program, its method loaded
  int64_t constant(const std::string& path, const std::string& method);

  std::string name_ = "executorch";
  std::map<std::string, std::unique_ptr<executorch::extension::module::Module>> programs_;
  std::map<std::string, std::string> data_files_;  // program path -> its .ptd
  std::map<AdapterName, Route> routes_;
  std::vector<std::string> adapters_;
  int max_context_ = 0;
  int vocab_ = 0;
};

}  // namespace memlora
