// ExecuTorch's log, routed through the core: its messages are kept, not printed, so a failure stays one line
// on stderr (the core's own Error quotes the runtime's last error message). MEMLORA_CORE_ET_LOG=1 prints
// every message on stderr as well, for debugging a program.
#pragma once

#include <string>

namespace memlora {

// Routes ExecuTorch's log here (once per process; call before loading a program).
void capture_executorch_log();

// The runtime's last error message since the last call ("" if none), cleared by the call.
std::string take_executorch_error();

}  // namespace memlora
