// memlora-core: the host runner of the on-device core -- the same sources an app links, driven from a shell.
// It is the core's own test harness (tests/test_device_core.py) and a tool to check a bundle on a desktop.
//
//   memlora-core version                          schema versions the core reads and writes (JSON)
//   memlora-core sha256 FILE...                   hex sha256 of each file, as sha256sum prints it
//   memlora-core verify --bundle B                manifest and every file's sha256
//   memlora-core tokenize (--bundle B | --tokenizer FILE)     JSONL of strings in, JSONL of id lists out
//   memlora-core detokenize (--bundle B | --tokenizer FILE) [--skip-special]   JSONL of id lists in, strings out
//
// Errors are one line on stderr, "error: <file>: <problem>", with exit code 2 (as the memlora CLI).
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "../src/bundle.h"
#include "../src/error.h"
#include "../src/json_view.h"
#include "../src/sha256.h"
#include "../src/tokenizer.h"

using namespace memlora;

namespace {

struct Args {
  std::string command;
  std::map<std::string, std::string> options;  // --name value; a flag holds ""
  std::vector<std::string> positional;

  std::string required(const std::string& name) const {
    auto it = options.find(name);
    if (it == options.end() || it->second.empty()) throw Error(command + ": pass --" + name);
    return it->second;
  }
  bool flag(const std::string& name) const { return options.count(name) > 0; }
};

const std::vector<std::string> FLAGS = {"skip-special"};

Args parse_args(int argc, char** argv) {
  Args args;
  if (argc < 2) throw Error("usage: memlora-core version|sha256|verify|tokenize|detokenize ... (see device_core/README.md)");
  args.command = argv[1];
  for (int i = 2; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      args.positional.push_back(a);
      continue;
    }
    const std::string name = a.substr(2);
    const bool is_flag = std::find(FLAGS.begin(), FLAGS.end(), name) != FLAGS.end();
    if (is_flag) {
      args.options[name] = "";
    } else {
      if (i + 1 >= argc) throw Error(args.command + ": --" + name + " needs a value");
      args.options[name] = argv[++i];
    }
  }
  return args;
}

Tokenizer open_tokenizer(const Args& args) {
  if (args.flag("tokenizer")) return Tokenizer::from_file(args.required("tokenizer"));
  const Bundle bundle = load_bundle(args.required("bundle"));
  return Tokenizer::from_file(bundle.file(bundle.manifest.tokenizer_dir + "/tokenizer.json"));
}

// One JSON value per input line: strings to ids, or ids to strings.
int tokenize(const Args& args, bool encode) {
  const Tokenizer tokenizer = open_tokenizer(args);
  std::string line;
  for (int n = 1; std::getline(std::cin, line); ++n) {
    const Json value = parse_json(line, "stdin:" + std::to_string(n));
    JsonView v(value, "stdin:" + std::to_string(n) + ": expected " + (encode ? "a JSON string" : "a list of ids"));
    if (encode) {
      std::cout << Json(tokenizer.encode(v.string())).dump() << "\n";
    } else {
      std::vector<int> ids;
      for (int64_t id : v.integers()) ids.push_back(int(id));
      std::cout << Json(tokenizer.decode(ids, args.flag("skip-special"))).dump() << "\n";
    }
  }
  return 0;
}

int run(const Args& args) {
  if (args.command == "version") {
    std::cout << Json{{"bundle_schema", BUNDLE_SCHEMA}}.dump() << "\n";
    return 0;
  }
  if (args.command == "sha256") {
    for (const std::string& f : args.positional) std::cout << sha256_file(f) << "  " << f << "\n";
    return 0;
  }
  if (args.command == "verify") {
    const Bundle bundle = load_bundle(args.required("bundle"));
    std::cout << bundle.path << ": ok (" << bundle.manifest.files.size() << " files checked)\n";
    return 0;
  }
  if (args.command == "tokenize") return tokenize(args, true);
  if (args.command == "detokenize") return tokenize(args, false);
  throw Error("unknown command '" + args.command + "' (see device_core/README.md)");
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse_args(argc, argv));
  } catch (const Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
