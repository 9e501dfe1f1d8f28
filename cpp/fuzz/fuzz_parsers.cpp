// carseg_fuzz: a seeded mutation loop over libcarseg's parsers of untrusted bytes (the image
// decoders and the manifest reader), built with AddressSanitizer and UndefinedBehaviorSanitizer
// (no libFuzzer: the project builds with GCC). Any memory error, undefined behaviour or
// exception other than carseg::Error ends the run with a non-zero status and the input that did
// it, written to the current folder.
//
//   carseg_fuzz images|manifest [--seconds N] [--seed S]
//
// ctest runs both for CARSEG_FUZZ_SECONDS (default 30) each, with a fixed seed, so that a
// failure reproduces.
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/manifest.h"

namespace {

using Bytes = std::vector<std::uint8_t>;

carseg::Image picture(int w, int h) {
  carseg::Image img;
  img.width = w;
  img.height = h;
  img.pixels.resize(static_cast<std::size_t>(w) * h * 3);
  for (std::size_t i = 0; i < img.pixels.size(); ++i) {
    img.pixels[i] = static_cast<std::uint8_t>((i * 7 + i / 97) & 0xFF);
  }
  return img;
}

// Valid inputs to start from: each format the decoders take, and a manifest.
std::vector<Bytes> image_seeds() {
  const carseg::Image img = picture(24, 16);
  std::vector<Bytes> seeds;
  seeds.push_back(carseg::encode_jpeg(img, 90));
  seeds.push_back(carseg::encode_png(img.pixels.data(), 24, 16, 3));
  const std::vector<std::uint8_t> gray(24 * 16, 128);
  seeds.push_back(carseg::encode_png(gray.data(), 24, 16, 1));
  // GIF87a, 2x2, 2-colour global palette, one image block (LZW min code size 2).
  seeds.push_back({'G', 'I', 'F', '8', '7', 'a', 2, 0, 2, 0, 0x80, 0, 0, 0, 0, 0, 255, 255, 255,
                   0x2C, 0, 0, 0, 0, 2, 0, 2, 0, 0, 2, 2, 0x84, 0x51, 0, 0x3B});
  // BMP, 2x1, 24 bits, bottom-up rows padded to 4 bytes.
  seeds.push_back({'B', 'M', 62, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0, 40, 0, 0, 0, 2, 0, 0, 0, 1, 0,
                   0, 0, 1, 0, 24, 0, 0, 0, 0, 0, 8, 0, 0, 0, 0x13, 0x0B, 0, 0, 0x13, 0x0B, 0, 0,
                   0, 0, 0, 0, 0, 0, 0, 0, 30, 20, 10, 60, 50, 40, 0, 0});
  return seeds;
}

std::vector<Bytes> manifest_seeds() {
  const std::string text = R"({"schema_version": 1,
    "model": {"arch": "Unet", "encoder_name": "resnet18"},
    "preprocessing": {"size": 256, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
      "max_pixel_value": 255.0, "pad_value": 0, "pad_position": "bottom_right",
      "interpolation": "bilinear", "antialias": false, "channel_order": "RGB", "layout": "NCHW"},
    "output": {"kind": "logits", "activation": "sigmoid", "threshold": 0.5},
    "artifacts": {"torchscript": {"file": "model.torchscript.pt", "format": "torchscript",
      "precision": "fp32", "device": "cpu",
      "sha256": "0000000000000000000000000000000000000000000000000000000000000000"}}})";
  return {Bytes(text.begin(), text.end())};
}

// One random change: bit flips, interesting bytes, inserts, deletes, duplicated or spliced
// chunks, truncation.
Bytes mutate(Bytes b, const std::vector<Bytes>& seeds, std::mt19937_64& rng) {
  auto pick = [&](std::size_t n) { return n == 0 ? 0 : static_cast<std::size_t>(rng() % n); };
  const int rounds = 1 + static_cast<int>(rng() % 8);
  static const std::uint8_t kInteresting[] = {0, 1, 0x7F, 0x80, 0xFF, 0xFE, '[', '{', '"', '9'};
  for (int r = 0; r < rounds; ++r) {
    switch (rng() % 7) {
      case 0:
        if (!b.empty()) b[pick(b.size())] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
        break;
      case 1:
        if (!b.empty()) b[pick(b.size())] = kInteresting[rng() % sizeof kInteresting];
        break;
      case 2:
        b.insert(b.begin() + static_cast<long>(pick(b.size() + 1)),
                 static_cast<std::size_t>(1 + rng() % 16), static_cast<std::uint8_t>(rng()));
        break;
      case 3:
        if (!b.empty()) {
          const std::size_t at = pick(b.size());
          b.erase(b.begin() + static_cast<long>(at),
                  b.begin() + static_cast<long>(std::min(b.size(), at + 1 + rng() % 32)));
        }
        break;
      case 4:
        if (!b.empty() && b.size() < (1u << 16)) {
          const std::size_t at = pick(b.size()), len = 1 + pick(std::min<std::size_t>(64, b.size() - at));
          const Bytes chunk(b.begin() + static_cast<long>(at), b.begin() + static_cast<long>(at + len));
          b.insert(b.begin() + static_cast<long>(pick(b.size() + 1)), chunk.begin(), chunk.end());
        }
        break;
      case 5: {
        const Bytes& other = seeds[pick(seeds.size())];
        if (!other.empty()) {
          const std::size_t at = pick(other.size());
          b.resize(pick(b.size() + 1));
          b.insert(b.end(), other.begin() + static_cast<long>(at), other.end());
        }
        break;
      }
      default:
        b.resize(pick(b.size() + 1));
    }
  }
  return b;
}

void keep(const Bytes& input, const std::string& what) {
  const std::string name = "carseg_fuzz_crash.bin";
  std::ofstream(name, std::ios::binary).write(reinterpret_cast<const char*>(input.data()),
                                              static_cast<std::streamsize>(input.size()));
  std::cerr << "carseg_fuzz: " << what << "; the input is in " << name << "\n";
}

}  // namespace

int main(int argc, char** argv) {
  const std::string target = argc > 1 ? argv[1] : "";
  double seconds = 30;
  std::uint64_t seed = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--seconds") seconds = std::atof(argv[i + 1]);
    if (flag == "--seed") seed = std::strtoull(argv[i + 1], nullptr, 10);
  }
  if (target != "images" && target != "manifest") {
    std::cerr << "usage: carseg_fuzz images|manifest [--seconds N] [--seed S]\n";
    return 2;
  }
  const std::vector<Bytes> seeds = target == "images" ? image_seeds() : manifest_seeds();
  std::mt19937_64 rng(seed);
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  std::uint64_t runs = 0, refused = 0;
  Bytes input = seeds[0];
  while (std::chrono::steady_clock::now() < end) {
    // Mostly mutants of mutants, now and then a fresh start from a seed.
    input = mutate(rng() % 8 == 0 ? seeds[rng() % seeds.size()] : input, seeds, rng);
    if (input.size() > (1u << 20)) input = seeds[rng() % seeds.size()];
    ++runs;
    try {
      if (target == "images") {
        (void)carseg::peek_image(input, "fuzz", 1 << 20);
        (void)carseg::decode_image(input, "fuzz", 1 << 20);  // at most 1 MP: runs stay fast
      } else {
        (void)carseg::Manifest::parse(std::string(input.begin(), input.end()), "fuzz.json");
      }
    } catch (const carseg::Error&) {
      ++refused;  // the expected answer to most mutants
    } catch (const std::exception& e) {
      keep(input, std::string("an exception other than carseg::Error: ") + e.what());
      return 1;
    }
  }
  std::cout << "carseg_fuzz " << target << ": " << runs << " inputs in " << seconds << " s, "
            << refused << " refused, " << runs - refused << " accepted, no sanitizer error\n";
  return runs > 0 ? 0 : 1;
}
