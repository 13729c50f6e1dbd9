// The pipeline's results as JSON, written once for the host runner and the C API, so a shell and an app read
// the same documents (field names as memlora/store.py and memlora/pipeline.py name them).
#pragma once

#include <vector>

#include "json_view.h"
#include "pipeline.h"
#include "store.h"

namespace memlora {

Json memories_json(const std::vector<StoredMemory>& memories, bool scores);
// {"memories", "history" (null unless `history`), "exchanges"}: the whole store
Json store_json(MemoryStore& store, bool history);
// {"store", "exchanges": [{"key", "status", "facts", "events": [{"event", "id"}], "error", "turn_ids"}],
//  "statuses": {status: count}, "memories": count}
Json ingest_json(MemoryStore& store, const std::vector<ExchangeResult>& results);
// {"answer", "memories" (with scores), "adapter", "prompt_tokens", "decode_steps", "prefill_tokens_per_second",
//  "decode_tokens_per_second"}
Json answer_json(const Answer& answer);

double per_second(int count, double seconds);

}  // namespace memlora
