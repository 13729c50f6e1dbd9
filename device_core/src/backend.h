// The forward pass behind one interface, with memlora/backend.py's contract: every runtime the core drives
// (ExecuTorch here; Core ML and ONNX Runtime in the apps later) implements `run`, and the checks -- with the
// Python side's one-line messages -- are written once here, so the decode loop cannot tell backends apart.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace memlora {

using AdapterName = std::optional<std::string>;  // nullopt: the base (or merged) model

class Backend {
 public:
  virtual ~Backend() = default;

  virtual const std::string& name() const = 0;
  virtual const std::vector<std::string>& adapters() const = 0;
  virtual int max_context() const = 0;
  virtual int vocab() const = 0;

  // Forget the sequence: the next forward must start at position 0.
  void reset() { cached_ = 0; }

  // Runs `tokens` at positions start .. start+len-1 with `adapter` active and returns the last position's
  // logits (`vocab` floats). Requirements as in memlora/backend.py (Backend.forward); a call that breaks one
  // is an Error before anything runs.
  std::vector<float> forward(const std::vector<int>& tokens, int start, const AdapterName& adapter);

 protected:
  // The runtime's forward pass of a call that meets the contract.
  virtual std::vector<float> run(const std::vector<int>& tokens, int start, const AdapterName& adapter) = 0;

 private:
  void check(const std::vector<int>& tokens, int start, const AdapterName& adapter) const;
  int cached_ = 0;              // positions 0 .. cached-1 hold the current sequence
  AdapterName sequence_adapter_;  // the adapter that wrote it
};

// "'name'" or "None", as Python's repr writes an adapter in the contract's messages.
std::string adapter_repr(const AdapterName& adapter);

}  // namespace memlora
