#include "pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "byte_level.h"
#include "error.h"

namespace memlora {
namespace {

// GPT-2's split pattern as tokenizers' ByteLevel writes it; with PCRE2_UCP, \s, \p{L} and \p{N} are Unicode's
// classes, as in the Oniguruma engine of `tokenizers` (U+0085, U+00A0 and U+3000 are whitespace in both).
constexpr const char* PATTERN = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

struct PreTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

PreTokenizer::PreTokenizer(bool add_prefix_space, bool use_regex, const std::string& source)
    : add_prefix_space_(add_prefix_space) {
  if (!use_regex) return;
  int error;
  PCRE2_SIZE offset;
  const std::string p = PATTERN;
  auto regex = std::make_unique<Regex>();
  regex->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.c_str()), p.size(), PCRE2_UTF | PCRE2_UCP, &error,
                              &offset, nullptr);
  if (regex->code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    throw Error(source + ": PCRE2 cannot compile the byte-level split pattern (" +
                reinterpret_cast<const char*>(message) + ")");
  }
  pcre2_jit_compile(regex->code, PCRE2_JIT_COMPLETE);  // optional: matching works without JIT
  regex_ = std::move(regex);
}

PreTokenizer::~PreTokenizer() = default;
PreTokenizer::PreTokenizer(PreTokenizer&&) noexcept = default;
PreTokenizer& PreTokenizer::operator=(PreTokenizer&&) noexcept = default;

std::vector<std::string> PreTokenizer::split(std::string_view input) const {
  std::string text(input);
  if (add_prefix_space_ && (text.empty() || text[0] != ' ')) text.insert(text.begin(), ' ');
  std::vector<std::string> pieces;
  if (!regex_) {
    if (!text.empty()) pieces.push_back(bytes_to_alphabet(text));
    return pieces;
  }
  std::unique_ptr<pcre2_match_data, void (*)(pcre2_match_data*)> match(
      pcre2_match_data_create_from_pattern(regex_->code, nullptr), pcre2_match_data_free);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t at = 0, gap = 0;  // a gap between matches is a piece of its own (tokenizers' "isolated" split)
  while (at < text.size()) {
    const int rc = pcre2_match(regex_->code, subject, text.size(), at, 0, match.get(), nullptr);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) throw Error("tokenizer: the byte-level split failed on a text (PCRE2 error " + std::to_string(rc) + ")");
    const PCRE2_SIZE* span = pcre2_get_ovector_pointer(match.get());
    if (span[1] == span[0]) {  // never for this pattern; stepping one character keeps the loop finite
      for (at = span[0] + 1; at < text.size() && (uint8_t(text[at]) & 0xC0) == 0x80;) ++at;
      continue;
    }
    if (span[0] > gap) pieces.push_back(bytes_to_alphabet(std::string_view(text).substr(gap, span[0] - gap)));
    pieces.push_back(bytes_to_alphabet(std::string_view(text).substr(span[0], span[1] - span[0])));
    at = gap = span[1];
  }
  if (gap < text.size()) pieces.push_back(bytes_to_alphabet(std::string_view(text).substr(gap)));
  return pieces;
}

}  // namespace memlora
