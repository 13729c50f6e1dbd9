// The bundle as the core reads it: manifest.json (memlora/schemas/manifest.schema.json) as typed structs,
// every listed file checked by sha256, nothing unlisted beside them -- the checks of export/bundle.py's
// load_bundle, with the same one-line errors naming the file.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "constrain.h"
#include "json_view.h"

namespace memlora {

inline constexpr const char* BUNDLE_SCHEMA = "memlora-bundle/3";
inline constexpr const char* MANIFEST = "manifest.json";

struct SpecialTokens {
  std::optional<int> bos_id;
  std::vector<int> eos_ids;  // generation ends on any of them
  std::optional<int> pad_id;
};

struct ModelFacts {
  std::string name;
  std::string architecture;
  int vocab_size = 0;
  int max_context = 0;
  SpecialTokens special;
};

// One memory operation's generation settings (manifest generation.operations.<op>).
struct Operation {
  std::optional<std::string> adapter;  // nullopt: the base (or merged) model
  int max_new_tokens = 0;
  std::vector<std::string> stop;
};

// A prompt template (manifest prompts.templates.<op>): what the prompt builder will fill in.
struct PromptTemplate {
  std::string system;
  std::string user;
};

// The model's chat template as literal text (manifest prompts.chat, export/chat_format.py): a prompt is
// before_system + system message + between + user message + after_user.
struct ChatFormat {
  std::string before_system;
  std::string between;
  std::string after_user;
};

// How many memories the pipeline retrieves (manifest prompts.retrieval, memlora/pipeline.py's settings).
struct Retrieval {
  int top_k = 0;      // per fact, for an update
  int answer_k = 0;   // for a question
  int max_shown = 0;  // most memories one update prompt shows
};

// The ExecuTorch target entry (export/executorch_export.py export_target).
struct ExecuTorchTarget {
  std::string mode;                                  // "merged" | "separable"
  std::map<std::string, std::string> graphs;         // program name -> bundle-relative .pte
  std::map<std::string, std::string> methods;        // adapter -> method name
  std::vector<std::string> data_files;               // bundle-relative .ptd files
  // Separable programs stack every adapter in one method behind a gate input (`gates` in the manifest):
  // its width, and each adapter's [start, stop) columns set to 1. Width 0: no gate input.
  int gate_width = 0;
  std::map<std::string, std::pair<int, int>> gate_spans;
};

struct Golden {
  std::string file;       // bundle-relative JSONL of trace records
  int max_new_tokens = 0; // the budget the records were generated with (capped per operation)
  int records = 0;
};

struct Manifest {
  std::string memlora_version;
  ModelFacts model;
  std::string tokenizer_dir;
  std::map<std::string, PromptTemplate> prompts;
  std::optional<ChatFormat> chat;       // absent in bundles of memlora 0.4.0
  std::optional<Retrieval> retrieval;   // likewise
  int trace_top_k = 0;
  std::map<std::string, Operation> operations;
  std::map<std::string, std::string> target_modes;  // every target's mode, by target name
  std::optional<ExecuTorchTarget> executorch;
  Golden golden;
  std::vector<std::pair<std::string, std::string>> files;  // relative path -> sha256, in manifest order
  std::string constraints_file;  // bundle-relative memlora-constraints/1 file
  Json document;  // the whole manifest, for sections later modules type themselves (the embedder)
};

struct Bundle {
  std::string path;
  Manifest manifest;

  std::string file(const std::string& relative) const { return path + "/" + relative; }
  const Operation& operation(const std::string& op) const;  // Error naming the manifest if unknown
  const ExecuTorchTarget& executorch() const;               // Error naming the manifest if absent
  Constraint constraint(const std::string& table) const;    // a table of the bundle's constraint file (read once)
  mutable std::shared_ptr<const Constraints> constraints;
};

// The typed manifest of the bundle at `dir`; schema version and the fields the core reads are checked.
Manifest read_manifest(const std::string& dir);

// Read and check a bundle: the manifest, and when `verify` every listed file present with its sha256 and no
// file the manifest does not list.
Bundle load_bundle(const std::string& path, bool verify = true);

}  // namespace memlora
