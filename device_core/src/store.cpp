#include "store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <numeric>
#include <utility>

#include "error.h"
#include "py_text.h"
#include "utf8.h"

namespace memlora {

namespace {

const std::pair<const char*, const char*> TABLES[] = {
    {"memories", "id TEXT PRIMARY KEY, text TEXT NOT NULL, date TEXT NOT NULL, embedding BLOB NOT NULL, "
                 "created_seq INTEGER NOT NULL, updated_seq INTEGER NOT NULL"},
    {"history", "seq INTEGER PRIMARY KEY AUTOINCREMENT, memory_id TEXT NOT NULL, event TEXT NOT NULL, "
                "old_text TEXT, new_text TEXT, date TEXT NOT NULL, turn_ids TEXT NOT NULL, exchange TEXT NOT NULL, "
                "at REAL NOT NULL"},
    {"exchanges", "key TEXT PRIMARY KEY, status TEXT NOT NULL, turn_ids TEXT NOT NULL, facts TEXT, "
                  "failed_op TEXT, raw_output TEXT, error TEXT, at REAL NOT NULL"},
    {"meta", "key TEXT PRIMARY KEY, value TEXT NOT NULL"},
};
constexpr int BUSY_TIMEOUT_MS = 30000;

struct SqliteError {
  std::string message;
};

double now() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

// json.dumps of a list of strings (ASCII only, ", " between items)
std::string json_strings(const std::vector<std::string>& items) {
  std::string out = "[";
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + json_quote(to_code_points(items[i]));
  return out + "]";
}

// One prepared statement: bind by position (1-based, in order), step, read columns.
class Statement {
 public:
  Statement(sqlite3* db, const std::string& sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt_, nullptr) != SQLITE_OK) throw SqliteError{sqlite3_errmsg(db)};
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  Statement& bind(const std::string& v) { return check(sqlite3_bind_text(stmt_, ++n_, v.data(), int(v.size()), SQLITE_TRANSIENT)); }
  Statement& bind(const std::optional<std::string>& v) { return v ? bind(*v) : check(sqlite3_bind_null(stmt_, ++n_)); }
  Statement& bind(long long v) { return check(sqlite3_bind_int64(stmt_, ++n_, v)); }
  Statement& bind(double v) { return check(sqlite3_bind_double(stmt_, ++n_, v)); }
  Statement& bind(const std::vector<float>& v) {
    return check(sqlite3_bind_blob(stmt_, ++n_, v.data(), int(v.size() * sizeof(float)), SQLITE_TRANSIENT));
  }

  bool step() {  // true: a row
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw SqliteError{sqlite3_errmsg(db_)};
  }
  void run() {
    while (step()) {
    }
  }

  std::string text(int i) const {
    const auto* p = reinterpret_cast<const char*>(sqlite3_column_text(stmt_, i));
    return p ? std::string(p, size_t(sqlite3_column_bytes(stmt_, i))) : std::string();
  }
  std::optional<std::string> optional_text(int i) const {
    if (sqlite3_column_type(stmt_, i) == SQLITE_NULL) return std::nullopt;
    return text(i);
  }
  long long integer(int i) const { return sqlite3_column_int64(stmt_, i); }
  std::vector<float> floats(int i) const {
    const auto* p = static_cast<const float*>(sqlite3_column_blob(stmt_, i));
    return p ? std::vector<float>(p, p + size_t(sqlite3_column_bytes(stmt_, i)) / sizeof(float)) : std::vector<float>();
  }

 private:
  Statement& check(int rc) {
    if (rc != SQLITE_OK) throw SqliteError{sqlite3_errmsg(db_)};
    return *this;
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int n_ = 0;
};

void exec(sqlite3* db, const std::string& sql) {
  char* message = nullptr;
  if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &message) != SQLITE_OK) {
    SqliteError e{message ? message : sqlite3_errmsg(db)};
    sqlite3_free(message);
    throw e;
  }
}

std::optional<std::string> meta(sqlite3* db, const std::string& key) {
  Statement s(db, "SELECT value FROM meta WHERE key=?");
  s.bind(key);
  return s.step() ? std::optional<std::string>(s.text(0)) : std::nullopt;
}

std::vector<std::pair<std::string, std::vector<std::string>>> tables(sqlite3* db) {
  std::vector<std::pair<std::string, std::vector<std::string>>> found;
  Statement names(db, "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name");
  while (names.step()) {
    found.push_back({names.text(0), {}});
    Statement columns(db, "PRAGMA table_info(\"" + names.text(0) + "\")");
    while (columns.step()) found.back().second.push_back(columns.text(1));
  }
  return found;
}

std::vector<std::pair<std::string, std::vector<std::string>>> expected_tables() {
  std::vector<std::pair<std::string, std::vector<std::string>>> out;
  for (const auto& [name, spec] : TABLES) {
    out.push_back({name, {}});
    const std::string s = spec;
    for (size_t at = 0; at < s.size();) {
      const size_t comma = std::min(s.find(", ", at), s.size());
      const std::string column = s.substr(at, comma - at);
      out.back().second.push_back(column.substr(0, column.find(' ')));
      at = comma + 2;
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string uri_quote(const std::string& path) {  // urllib.parse.quote: "/" and unreserved characters kept
  static const char* HEX = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : path) {
    if (std::isalnum(c) || std::strchr("/_.-~", c)) {
      out += char(c);
    } else {
      out += '%';
      out += HEX[c >> 4];
      out += HEX[c & 15];
    }
  }
  return out;
}

sqlite3* open_db(const std::string& uri, int flags) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(uri.c_str(), &db, flags | SQLITE_OPEN_URI, nullptr);
  if (rc != SQLITE_OK) {
    SqliteError e{db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)};
    sqlite3_close(db);
    throw e;
  }
  sqlite3_busy_timeout(db, BUSY_TIMEOUT_MS);
  return db;
}

// store.py's _connect_read_only: mode=ro, or immutable on read-only media (no -shm can be made)
sqlite3* open_read_only(const std::string& path) {
  namespace fs = std::filesystem;
  if (!fs::is_regular_file(path)) throw Error(path + ": no memory store here; run `memlora ingest` first (or pass --store)");
  const fs::path resolved = fs::weakly_canonical(fs::absolute(path));
  const std::string uri = "file:" + uri_quote(resolved.string()) + "?mode=ro";
  sqlite3* db = open_db(uri, SQLITE_OPEN_READONLY);
  try {
    Statement(db, "SELECT count(*) FROM sqlite_master").run();
    return db;
  } catch (const SqliteError&) {
    sqlite3_close(db);
    if (access(resolved.parent_path().c_str(), W_OK) == 0) throw;
    return open_db(uri + "&immutable=1", SQLITE_OPEN_READONLY);
  }
}

sqlite3* open_writable(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty()) fs::create_directories(parent, ec);
  if (ec) throw Error(parent.string() + ": cannot create the store's folder (" + ec.message() + ")");
  return open_db(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
}

}  // namespace

MemoryStore::MemoryStore(const std::string& p, bool read_only) : path(p), read_only_(read_only) {
  try {
    db_ = read_only ? open_read_only(path) : open_writable(path);
    check_schema();
  } catch (const SqliteError& e) {
    sqlite3_close(db_);
    throw Error(path + ": not a usable memory store (" + e.message + ")");
  } catch (...) {
    sqlite3_close(db_);
    throw;
  }
}

MemoryStore::~MemoryStore() { sqlite3_close(db_); }

void MemoryStore::check_schema() {
  auto found = tables(db_);
  if (found.empty()) {
    if (read_only_) throw Error(path + ": an empty database, not a memory store; run `memlora ingest` first");
    std::string script = "BEGIN IMMEDIATE;\n";
    for (const auto& [name, spec] : TABLES) script += std::string("CREATE TABLE IF NOT EXISTS ") + name + " (" + spec + ");\n";
    exec(db_, script + "INSERT OR IGNORE INTO meta VALUES ('schema_version', '" + std::to_string(STORE_SCHEMA_VERSION) +
                  "');\nCOMMIT;");
    found = tables(db_);
  }
  if (found != expected_tables()) {
    std::string have;
    for (const auto& t : found) have += (have.empty() ? "" : ", ") + t.first;
    throw Error(path + ": not a memlora memory store (tables: " + (have.empty() ? "none" : have) + "); refusing to touch it");
  }
  std::string problems;
  for (Statement check(db_, "PRAGMA quick_check(3)"); check.step();) problems += (problems.empty() ? "" : "; ") + check.text(0);
  if (problems != "ok") {
    throw Error(path + ": the memory store is damaged (" + problems + "); restore it from a copy or re-ingest into a new store");
  }
  const auto version_row = meta(db_, "schema_version");
  const int version = version_row && all_digits(*version_row) ? std::stoi(*version_row) : STORE_SCHEMA_VERSION;
  if (version > STORE_SCHEMA_VERSION) {
    throw Error(path + ": written by a newer memlora (store schema " + std::to_string(version) + ", this version reads " +
                std::to_string(STORE_SCHEMA_VERSION) + "); upgrade memlora to use it");
  }
  if (!read_only_) {
    Statement(db_, "PRAGMA journal_mode=WAL").run();
    exec(db_, "PRAGMA synchronous=FULL");
    if (!version_row) Statement(db_, "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)").bind(std::to_string(STORE_SCHEMA_VERSION)).run();
  }
}

MemoryStore::Writer::Writer(const MemoryStore& store) {
  const std::string lock_path = store.path + ".lock";
  fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_APPEND, 0644);
  if (fd_ < 0) throw Error(lock_path + ": cannot create the store's writer lock (" + std::strerror(errno) + ")");
  if (flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    std::string owner(256, '\0');
    const ssize_t n = pread(fd_, owner.data(), owner.size(), 0);
    owner.resize(size_t(std::max<ssize_t>(n, 0)));
    owner = to_utf8(py_strip(to_code_points(utf8_lossy(owner))));
    std::cerr << "waiting for another writer of " << store.path << " (" << (owner.empty() ? "another process" : owner)
              << ") to finish" << std::endl;
    flock(fd_, LOCK_EX);
  }
  if (ftruncate(fd_, 0) == 0) {  // who holds it, for the message above; the lock works without
    const std::string who = "pid " + std::to_string(getpid()) + "\n";
    (void)!::write(fd_, who.data(), who.size());
  }
}

MemoryStore::Writer::~Writer() {
  flock(fd_, LOCK_UN);
  ::close(fd_);
}

template <class Body>
auto MemoryStore::write(const std::string& key, Body body) {
  if (read_only_) throw Error(path + ": opened read-only");
  try {
    exec(db_, "BEGIN IMMEDIATE");
    try {
      auto result = body();
      exec(db_, "COMMIT");
      return result;
    } catch (...) {
      if (!sqlite3_get_autocommit(db_)) exec(db_, "ROLLBACK");
      throw;
    }
  } catch (const SqliteError& e) {
    throw Error(path + ": cannot write the memory store (" + e.message + "); nothing of exchange " + key + " was written");
  }
}

bool MemoryStore::is_done(const std::string& key) {
  Statement s(db_, "SELECT 1 FROM exchanges WHERE key=?");
  s.bind(key);
  try {
    return s.step();
  } catch (const SqliteError& e) {
    throw Error(path + ": cannot read the memory store (" + e.message + ")");
  }
}

bool MemoryStore::record_skipped(const std::string& key, const std::vector<std::string>& turn_ids, const std::string& status,
                                 const std::optional<std::vector<std::string>>& facts,
                                 const std::optional<std::string>& failed_op, const std::optional<std::string>& raw_output,
                                 const std::optional<std::string>& error) {
  return write(key, [&] {
    Statement(db_, "INSERT OR IGNORE INTO exchanges VALUES (?,?,?,?,?,?,?,?)")
        .bind(key).bind(status).bind(json_strings(turn_ids)).bind(facts ? json_strings(*facts) : "null")
        .bind(failed_op).bind(raw_output).bind(error).bind(now()).run();
    return sqlite3_changes(db_) == 1;
  });
}

std::optional<std::vector<std::string>> MemoryStore::apply(const std::string& key, const std::vector<std::string>& turn_ids,
                                                           const std::string& date, const std::vector<std::string>& facts,
                                                           const std::vector<Change>& changes) {
  return write(key, [&]() -> std::optional<std::vector<std::string>> {
    Statement done(db_, "SELECT 1 FROM exchanges WHERE key=?");
    if (done.bind(key).step()) return std::nullopt;
    const long long seq = std::stoll(meta(db_, "seq").value_or("0")) + 1;
    long long next_id = std::stoll(meta(db_, "next_id").value_or("0"));
    const std::string turns = json_strings(turn_ids);
    std::vector<std::string> touched;
    for (const Change& c : changes) {
      if (c.event == "NONE") continue;
      std::string id;
      std::optional<std::string> old;
      if (c.event == "ADD") {
        id = "m" + std::to_string(next_id++);
        Statement(db_, "INSERT INTO memories VALUES (?,?,?,?,?,?)").bind(id).bind(c.text).bind(date).bind(c.embedding)
            .bind(seq).bind(seq).run();
      } else {
        id = c.memory_id;
        Statement row(db_, "SELECT text FROM memories WHERE id=?");
        if (!row.bind(id).step()) throw Error(path + ": memory " + id + " vanished during an update");
        old = row.text(0);
        if (c.event == "UPDATE") {
          Statement(db_, "UPDATE memories SET text=?, date=?, embedding=?, updated_seq=? WHERE id=?").bind(c.text).bind(date)
              .bind(c.embedding).bind(seq).bind(id).run();
        } else {
          Statement(db_, "DELETE FROM memories WHERE id=?").bind(id).run();
        }
      }
      Statement(db_, "INSERT INTO history (memory_id,event,old_text,new_text,date,turn_ids,exchange,at) VALUES (?,?,?,?,?,?,?,?)")
          .bind(id).bind(c.event).bind(old).bind(c.event == "DELETE" ? std::nullopt : std::optional<std::string>(c.text))
          .bind(date).bind(turns).bind(key).bind(now()).run();
      touched.push_back(id);
    }
    Statement(db_, "INSERT OR REPLACE INTO meta VALUES ('seq', ?)").bind(std::to_string(seq)).run();
    Statement(db_, "INSERT OR REPLACE INTO meta VALUES ('next_id', ?)").bind(std::to_string(next_id)).run();
    Statement(db_, "INSERT INTO exchanges VALUES (?,?,?,?,?,?,?,?)").bind(key).bind(std::string("applied")).bind(turns)
        .bind(json_strings(facts)).bind(std::nullopt).bind(std::nullopt).bind(std::nullopt).bind(now()).run();
    return touched;
  });
}

std::vector<StoredMemory> MemoryStore::memories() {
  std::vector<StoredMemory> out;
  Statement s(db_, "SELECT id,text,date FROM memories ORDER BY created_seq, CAST(substr(id,2) AS INTEGER)");
  while (s.step()) out.push_back({s.text(0), s.text(1), s.text(2)});
  return out;
}

std::vector<StoredMemory> MemoryStore::search(const std::vector<float>& query, int k) {
  std::vector<StoredMemory> mems;
  std::vector<std::vector<float>> vectors;
  Statement s(db_, "SELECT id,text,date,embedding FROM memories ORDER BY created_seq, CAST(substr(id,2) AS INTEGER)");
  while (s.step()) {
    mems.push_back({s.text(0), s.text(1), s.text(2)});
    vectors.push_back(s.floats(3));
  }
  if (mems.empty() || k <= 0) return {};
  if (vectors[0].size() != query.size()) {
    throw Error(path + ": its memories were embedded as " + std::to_string(vectors[0].size()) +
                "-dimensional vectors, this embedder gives " + std::to_string(query.size()) +
                ": search the store with the embedder that filled it");
  }
  for (size_t i = 0; i < mems.size(); ++i) {
    mems[i].score = std::inner_product(vectors[i].begin(), vectors[i].end(), query.begin(), 0.0f);
  }
  std::stable_sort(mems.begin(), mems.end(), [](const StoredMemory& a, const StoredMemory& b) { return a.score > b.score; });
  mems.resize(std::min(mems.size(), size_t(k)));
  return mems;
}

std::vector<HistoryRow> MemoryStore::history() {
  std::vector<HistoryRow> out;
  Statement s(db_, "SELECT seq,memory_id,event,old_text,new_text,date,turn_ids,exchange FROM history ORDER BY seq");
  while (s.step()) {
    out.push_back({s.integer(0), s.text(1), s.text(2), s.optional_text(3), s.optional_text(4), s.text(5), s.text(6), s.text(7)});
  }
  return out;
}

std::vector<ExchangeRow> MemoryStore::exchanges() {
  std::vector<ExchangeRow> out;
  Statement s(db_, "SELECT key,status,turn_ids,facts,failed_op,raw_output,error FROM exchanges ORDER BY at");
  while (s.step()) {
    out.push_back({s.text(0), s.text(1), s.text(2), s.optional_text(3), s.optional_text(4), s.optional_text(5), s.optional_text(6)});
  }
  return out;
}

}  // namespace memlora
