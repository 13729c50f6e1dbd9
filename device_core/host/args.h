// The host runner's command line: `memlora-core COMMAND [--name value | --flag | positional]...`.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

namespace memlora {

struct Args {
  std::string command;
  std::map<std::string, std::string> options;  // --name value; a flag holds ""
  std::vector<std::string> positional;

  std::string required(const std::string& name) const;  // Error "<command>: pass --<name>" if absent
  bool has(const std::string& name) const { return options.count(name) > 0; }
};

// `flags` are the options that take no value; Error with the usage line when there is no command.
Args parse_args(int argc, char** argv, const std::set<std::string>& flags, const std::string& usage);

}  // namespace memlora
