#include "args.h"

#include "../src/error.h"

namespace memlora {

std::string Args::required(const std::string& name) const {
  auto it = options.find(name);
  if (it == options.end() || it->second.empty()) throw Error(command + ": pass --" + name);
  return it->second;
}

Args parse_args(int argc, char** argv, const std::set<std::string>& flags, const std::string& usage) {
  if (argc < 2) throw Error(usage);
  Args args;
  args.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      args.positional.push_back(a);
      continue;
    }
    const std::string name = a.substr(2);
    if (flags.count(name)) {
      args.options[name] = "";
    } else if (i + 1 < argc) {
      args.options[name] = argv[++i];
    } else {
      throw Error(args.command + ": --" + name + " needs a value");
    }
  }
  return args;
}

}  // namespace memlora
