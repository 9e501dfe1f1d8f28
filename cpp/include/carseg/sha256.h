#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace carseg {

/// FIPS 180-4 SHA-256, incremental. Small and dependency-free: only used to check artifacts.
/// On x86-64 CPUs with the SHA extensions (SHA-NI) the blocks go through those instructions,
/// several times faster than the portable code: a 57 MB model was 0.4 s of every start.
class Sha256 {
 public:
  enum class Impl { kBest, kPortable };  // kPortable: the plain C++ rounds, whatever the CPU
  explicit Sha256(Impl impl = Impl::kBest);
  /// Whether this CPU (and this build) can use the SHA-NI instructions.
  [[nodiscard]] static bool hardware_available();
  void update(const void* data, std::size_t size);
  void update(std::string_view data) { update(data.data(), data.size()); }
  /// Finishes the hash; the object must not be updated afterwards.
  [[nodiscard]] std::array<std::uint8_t, 32> digest();
  [[nodiscard]] std::string hex_digest();

 private:
  void compress(const std::uint8_t* blocks, std::size_t count);
  bool hardware_;
  std::array<std::uint32_t, 8> state_;
  std::array<std::uint8_t, 64> buffer_{};
  std::size_t buffered_ = 0;
  std::uint64_t length_ = 0;
};

/// Lower-case hex SHA-256 of a byte string.
[[nodiscard]] std::string sha256_hex(std::string_view data);
/// Lower-case hex SHA-256 of a file's content; throws carseg::Error when it cannot be read.
[[nodiscard]] std::string sha256_file(const std::filesystem::path& path);

}  // namespace carseg
