// The kernels of ExecuTorch's LLM ops our programs call outside XNNPACK (llama::update_cache writes the KV
// cache in place, llama::custom_sdpa attends over it).
//
// On Android and iOS, ExecuTorch's LLM runtime packages carry them. On a Linux host they ship only in the
// executorch wheel's libcustom_ops_aot_lib.so, which links libtorch and a Python extension: it loads only
// after libpython is loaded RTLD_GLOBAL. The build names both libraries (MEMLORA_LIBPYTHON,
// MEMLORA_CUSTOM_OPS); a build without them assumes the runtime already has the kernels.
#pragma once

namespace memlora {

// Loads the kernels once per process (registering them with ExecuTorch); Error naming the library if one
// does not load.
void load_llm_custom_ops();

}  // namespace memlora
