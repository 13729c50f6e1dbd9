// SHA-256 (FIPS 180-4), written here so the core checks a bundle's files with no crypto library: the
// manifest stamps every file with the hex digest Python's hashlib gives (memlora/checksum.py).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace memlora {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::array<uint8_t, 32> digest();  // ends the hash; call once
  std::string hexdigest();

 private:
  void compress(const uint8_t* block);
  std::array<uint32_t, 8> state_;
  std::array<uint8_t, 64> buffer_{};
  size_t buffered_ = 0;
  uint64_t length_ = 0;  // bytes hashed so far
};

// Hex sha256 of a file, read in 1 MiB chunks (models are hundreds of MB); Error naming the file if unreadable.
std::string sha256_file(const std::string& path);

}  // namespace memlora
