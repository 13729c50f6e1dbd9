// GPT-2's byte-level alphabet: each of the 256 byte values has a printable character, so a byte-level BPE
// vocabulary holds every byte string as text (space is "Ġ", newline "Ċ").
#pragma once

#include <string>
#include <string_view>

namespace memlora {

// The byte-level characters (UTF-8) of `bytes`, concatenated.
std::string bytes_to_alphabet(std::string_view bytes);

// The bytes a token's byte-level characters stand for; a token holding any character outside the alphabet
// stands for its own UTF-8 bytes (the rule of tokenizers' ByteLevel decoder, which added tokens rely on).
std::string alphabet_to_bytes(std::string_view token);

}  // namespace memlora
