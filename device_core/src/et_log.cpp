#include "et_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <mutex>

#include <executorch/runtime/platform/platform.h>

namespace memlora {
namespace {

std::mutex mutex;
std::string last_error;

void emit(et_timestamp_t, et_pal_log_level_t level, const char* file, const char*, size_t line, const char* message,
          size_t length) {
  static const bool echo = std::getenv("MEMLORA_CORE_ET_LOG") != nullptr;
  std::string text(message, length);
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  if (echo) std::fprintf(stderr, "executorch %c %s:%zu] %s\n", char(level), file, line, text.c_str());
  if (level == kError || level == kFatal) {
    std::lock_guard<std::mutex> lock(mutex);
    last_error = text;
  }
}

// register_pal warns, through the log it replaces, that a log was registered before (the custom ops' Python
// extension registers one that prints): stderr goes to /dev/null for that call; the warning is no news.
bool register_quietly() {
  std::fflush(stderr);
  const int saved = dup(STDERR_FILENO), null = open("/dev/null", O_WRONLY);
  if (saved >= 0 && null >= 0) dup2(null, STDERR_FILENO);
  const bool ok = executorch::runtime::register_pal(executorch::runtime::PalImpl::create(emit, __FILE__));
  std::fflush(stderr);
  if (saved >= 0 && null >= 0) dup2(saved, STDERR_FILENO);
  if (saved >= 0) close(saved);
  if (null >= 0) close(null);
  return ok;
}

}  // namespace

void capture_executorch_log() {
  static const bool registered = register_quietly();
  (void)registered;
}

std::string take_executorch_error() {
  std::lock_guard<std::mutex> lock(mutex);
  std::string out;
  out.swap(last_error);
  return out;
}

std::string executorch_why(executorch::runtime::Error e) {
  const std::string said = take_executorch_error();
  return std::string(executorch::runtime::to_string(e)) + (said.empty() ? "" : ": " + said);
}

}  // namespace memlora
