// ExecuTorch's log, routed through the core: its messages are kept, not printed, so a failure stays one line
// on stderr (the core's own Error quotes the runtime's last error message). MEMLORA_CORE_ET_LOG=1 prints
// every message on stderr as well, for debugging a program.
#pragma once

#include <string>

#include <executorch/runtime/core/error.h>

namespace memlora {

// Routes ExecuTorch's log here (once per process; call before loading a program).
void capture_executorch_log();

// The runtime's last error message since the last call ("" if none), cleared by the call.
std::string take_executorch_error();

// The runtime's error code, with its last logged error message when it gave one.
std::string executorch_why(executorch::runtime::Error e);

}  // namespace memlora
