#include "byte_level.h"

#include <array>
#include <cstdint>
#include <unordered_map>

#include "utf8.h"

namespace memlora {
namespace {

struct Alphabet {
  std::array<std::string, 256> of_byte;
  std::unordered_map<uint32_t, uint8_t> byte_of;

  Alphabet() {
    // printable bytes stand for themselves; the others map, in order, to U+0100 onwards
    uint32_t next = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? b : next++;
      append_utf8(of_byte[b], cp);
      byte_of[cp] = uint8_t(b);
    }
  }
};

const Alphabet& alphabet() {
  static const Alphabet a;
  return a;
}

}  // namespace

std::string bytes_to_alphabet(std::string_view bytes) {
  std::string out;
  for (unsigned char b : bytes) out += alphabet().of_byte[b];
  return out;
}

std::string alphabet_to_bytes(std::string_view token) {
  std::string out;
  for (size_t i = 0; i < token.size();) {
    auto it = alphabet().byte_of.find(next_codepoint(token, i));
    if (it == alphabet().byte_of.end()) return std::string(token);
    out += char(it->second);
  }
  return out;
}

}  // namespace memlora
