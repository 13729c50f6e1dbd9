#include "llm_custom_ops.h"

#include <dlfcn.h>

#include <string>

#include "error.h"

namespace memlora {
namespace {

void load_global(const char* path, const char* role) {
  if (dlopen(path, RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* why = dlerror();
    throw Error(std::string(path) + ": cannot load " + role + " (" + (why ? why : "unknown reason") + ")");
  }
}

}  // namespace

void load_llm_custom_ops() {
#if defined(MEMLORA_LIBPYTHON) && defined(MEMLORA_CUSTOM_OPS)
  static bool loaded = false;
  if (loaded) return;
  load_global(MEMLORA_LIBPYTHON, "libpython (the LLM custom-op kernels need it loaded first)");
  load_global(MEMLORA_CUSTOM_OPS, "ExecuTorch's LLM custom-op kernels (llama::update_cache, llama::custom_sdpa)");
  loaded = true;
#endif
}

}  // namespace memlora
