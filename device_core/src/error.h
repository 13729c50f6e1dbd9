// The one error type the core raises for problems a user can act on.
//
// Like memlora.errors.MemloraError on the Python side: the message is one line that names the file (or the
// component) and what is wrong with it, so a shell or an app can show it as it is.
#pragma once

#include <stdexcept>
#include <string>

namespace memlora {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace memlora
