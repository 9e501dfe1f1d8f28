#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "carseg/error.h"
#include "carseg/sha256.h"
#include "test_util.h"

namespace {

// NIST FIPS 180-4 / CAVP example vectors.
TEST(Sha256, NistEmpty) {
  EXPECT_EQ(carseg::sha256_hex(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Sha256, NistAbc) {
  EXPECT_EQ(carseg::sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256, NistTwoBlocks) {
  EXPECT_EQ(carseg::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256, NistFourBlocks) {
  EXPECT_EQ(carseg::sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmno"
                               "ijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
}

TEST(Sha256, NistMillionAInPiecesOfOddSizes) {
  carseg::Sha256 h;
  const std::string chunk(997, 'a');
  std::size_t left = 1'000'000;
  while (left > 0) {
    const std::size_t n = std::min(left, chunk.size());
    h.update(chunk.data(), n);
    left -= n;
  }
  EXPECT_EQ(h.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, PaddingBoundaries) {
  // 55, 56 and 64 bytes put the length field at the edge of a block.
  EXPECT_EQ(carseg::sha256_hex(std::string(55, 'a')),
            "9f4390f8d30c2dd92ec9f095b65e2b9ae9b0a925a5258e241c9f1e910f734318");
  EXPECT_EQ(carseg::sha256_hex(std::string(56, 'a')),
            "b35439a4ac6f0948b6d6f9e3c6af0f5f590ce20f1bde7090ef7970686ec6738a");
  EXPECT_EQ(carseg::sha256_hex(std::string(64, 'a')),
            "ffe054fe7ae0cb6dc65c3af9b61d5209f439851db43d0ba5997337df154668eb");
}

std::string hex_of(carseg::Sha256::Impl impl, const std::string& data, std::size_t piece) {
  carseg::Sha256 h(impl);
  for (std::size_t at = 0; at < data.size(); at += piece) {
    h.update(data.data() + at, std::min(piece, data.size() - at));
  }
  return h.hex_digest();
}

TEST(Sha256, PortableRoundsGiveTheNistDigests) {
  // The tests above take the SHA-NI path where the CPU has it; these pin the plain rounds.
  using Impl = carseg::Sha256::Impl;
  EXPECT_EQ(hex_of(Impl::kPortable, "abc", 3),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex_of(Impl::kPortable, std::string(1'000'000, 'a'), 997),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, ShaNiMatchesThePortableRoundsAtEveryLength) {
  if (!carseg::Sha256::hardware_available()) GTEST_SKIP() << "this CPU has no SHA-NI";
  using Impl = carseg::Sha256::Impl;
  std::mt19937 rng(7);
  std::string data(3 << 20, '\0');
  for (char& c : data) c = static_cast<char>(rng() & 0xFF);
  for (std::size_t n = 0; n <= 300; ++n) {
    const std::string part = data.substr(0, n);
    ASSERT_EQ(hex_of(Impl::kBest, part, 64), hex_of(Impl::kPortable, part, 64)) << n << " bytes";
  }
  for (const std::size_t piece : {1UL, 63UL, 65UL, 4096UL, 1UL << 20}) {
    EXPECT_EQ(hex_of(Impl::kBest, data, piece), hex_of(Impl::kPortable, data, 1 << 20))
        << "3 MiB in pieces of " << piece;
  }
}

TEST(Sha256, FileMatchesStringAndMissingFileNamesIt) {
  carseg::test::TempDir dir;
  carseg::test::write_bytes(dir / "abc.bin", "abc");
  EXPECT_EQ(carseg::sha256_file(dir / "abc.bin"), carseg::sha256_hex("abc"));
  try {
    (void)carseg::sha256_file(dir / "missing.bin");
    FAIL() << "expected carseg::Error";
  } catch (const carseg::Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing.bin"), std::string::npos) << e.what();
  }
}

}  // namespace
