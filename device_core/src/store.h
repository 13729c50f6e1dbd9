// memlora/store.py on the device: the same SQLite file (tables, schema version, WAL, the writer lock), so the
// core and Python open each other's stores. An exchange's changes and the row marking it done are one
// transaction (a killed process leaves whole exchanges or none); a done exchange is never applied twice.
#pragma once

#include <optional>
#include <string>
#include <vector>

struct sqlite3;

namespace memlora {

constexpr int STORE_SCHEMA_VERSION = 1;

// A resolved change: `memory_id` is a store id (empty for ADD); UPDATE and ADD carry the text's embedding.
struct Change {
  std::string event;
  std::string memory_id;
  std::string text;
  std::vector<float> embedding;
};

struct StoredMemory {
  std::string id, text, date;
  float score = 0;  // the cosine to the query, for search results
};

struct HistoryRow {
  long long seq = 0;
  std::string memory_id, event;
  std::optional<std::string> old_text, new_text;
  std::string date, turn_ids, exchange;  // turn_ids: the JSON list as stored
};

struct ExchangeRow {
  std::string key, status, turn_ids;
  std::optional<std::string> facts, failed_op, raw_output, error;
};

class MemoryStore {
 public:
  // read_only: never creates or writes anything, and needs the store to exist (store.py's messages)
  explicit MemoryStore(const std::string& path, bool read_only = false);
  ~MemoryStore();
  MemoryStore(const MemoryStore&) = delete;
  MemoryStore& operator=(const MemoryStore&) = delete;

  // Hold <store>.lock for a whole ingest (a second writer waits), as MemoryStore.writer() does.
  class Writer {
   public:
    explicit Writer(const MemoryStore& store);
    ~Writer();
    Writer(const Writer&) = delete;
    Writer& operator=(const Writer&) = delete;

   private:
    int fd_;
  };

  bool is_done(const std::string& key);
  // an exchange done without changes; false when another writer finished it first
  bool record_skipped(const std::string& key, const std::vector<std::string>& turn_ids, const std::string& status,
                      const std::optional<std::vector<std::string>>& facts = std::nullopt,
                      const std::optional<std::string>& failed_op = std::nullopt,
                      const std::optional<std::string>& raw_output = std::nullopt,
                      const std::optional<std::string>& error = std::nullopt);
  // the ids touched, or nullopt (nothing changed) when the exchange is already done
  std::optional<std::vector<std::string>> apply(const std::string& key, const std::vector<std::string>& turn_ids,
                                                const std::string& date, const std::vector<std::string>& facts,
                                                const std::vector<Change>& changes);

  std::vector<StoredMemory> memories();
  std::vector<StoredMemory> search(const std::vector<float>& query, int k);  // unit vectors: dot = cosine
  std::vector<HistoryRow> history();
  std::vector<ExchangeRow> exchanges();

  const std::string path;

 private:
  sqlite3* db_ = nullptr;
  bool read_only_;
  void check_schema();
  template <class Body>
  auto write(const std::string& key, Body body);
};

}  // namespace memlora
