// The bundle's self-test: replay its golden traces (export/golden.py, written on the fp32 reference) through
// the core -- the same prompt ids and operation settings in, the same output ids, stop reason and text out.
// An app runs it once after installing a bundle; the host runner runs it on a desktop.
#pragma once

#include <string>
#include <vector>

#include "backend.h"
#include "bundle.h"
#include "json_view.h"
#include "tokenizer.h"

namespace memlora {

struct ReplayResult {
  int line = 0;  // of the golden file
  std::string op;
  bool passed = false;
  int expected_tokens = 0;
  int tokens = 0;
  int first_divergence = -1;     // first position whose id differs (-1: none)
  std::string expected_stop, stop;
  bool text_equal = false;
  int topk_steps_compared = 0;   // steps whose top-k ids equal the golden ones, in order
  double topk_max_abs = 0;       // the largest |logit difference| over those steps
};

struct SelftestReport {
  std::string golden_file;
  std::vector<ReplayResult> records;
  double prefill_seconds = 0, decode_seconds = 0;
  int prompt_tokens = 0, decode_steps = 0;

  bool passed() const;
  Json to_json() const;
};

SelftestReport selftest(const Bundle& bundle, Backend& backend, const Tokenizer& tokenizer);

}  // namespace memlora
