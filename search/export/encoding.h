#pragma once
/// Byte encodings of the export: SHA-256 digests (checkpoint hashes), RFC 4648 base64 and lsb0
/// bit packing (masks).

#include <cstdint>
#include <string>
#include <vector>

namespace autorep::exports {

/// SHA-256 of a byte string / of a file's contents, as 64 lowercase hex digits.
std::string sha256_hex(const std::string& bytes);
std::string sha256_file(const std::string& path);

/// RFC 4648 base64 (standard alphabet, '=' padding).
std::string base64_encode(const std::vector<uint8_t>& bytes);
/// Throws std::runtime_error for characters outside the alphabet or bad padding.
std::vector<uint8_t> base64_decode(const std::string& text);

/// Packs 0/1 entries into bytes, bit i at byte i/8, bit position i%8 (LSB first, "lsb0").
std::vector<uint8_t> pack_bits(const std::vector<uint8_t>& bits);

}  // namespace autorep::exports
