#include "carseg/manifest.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/sha256.h"

namespace carseg {
namespace {

using nlohmann::json;

// A manifest.json may be written by anyone: these bound what reading one costs and what an
// error message repeats of it.
constexpr std::int64_t kMaxManifestBytes = 1 << 20;
constexpr std::size_t kMaxDepth = 16;        // the schema needs 5
constexpr std::size_t kMaxQuoted = 60;       // characters of a value an error message repeats
constexpr int kMaxInputSize = 8192;          // preprocessing.size

std::string type_name(const json& v) { return v.type_name(); }

// A value for an error message: at most kMaxQuoted characters of it, and how long it was.
std::string quote(const std::string& s) {
  std::string out = "\"";  // appended piecewise: GCC 12 warns (falsely) on "\"" + s
  out += s.substr(0, kMaxQuoted);
  if (s.size() <= kMaxQuoted) return out += "\"";
  return out += "...\" (" + std::to_string(s.size()) + " bytes)";
}
std::string quote(const json& v) {
  const std::string d = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return d.size() <= kMaxQuoted ? d : d.substr(0, kMaxQuoted) + "... (" + std::to_string(d.size()) +
                                          " characters)";
}

// Each getter names the field and what it expected, so a bad manifest says what to fix.
class Reader {
 public:
  explicit Reader(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& reason) const { throw Error(file_, reason); }

  const json& object(const json& parent, const std::string& key, const std::string& where) const {
    if (!parent.contains(key)) fail("missing field " + where + key);
    const json& v = parent.at(key);
    if (!v.is_object()) fail(where + key + ": expected an object, got " + type_name(v));
    return v;
  }
  std::string string(const json& parent, const std::string& key, const std::string& where,
                     const std::string* fallback = nullptr) const {
    if (!parent.contains(key)) {
      if (fallback) return *fallback;
      fail("missing field " + where + key);
    }
    const json& v = parent.at(key);
    if (!v.is_string()) fail(where + key + ": expected a string, got " + type_name(v));
    return v.get<std::string>();
  }
  // A finite number in [lo, hi].
  double number(const json& parent, const std::string& key, const std::string& where,
                double fallback, double lo, double hi) const {
    if (!parent.contains(key) || parent.at(key).is_null()) return fallback;
    const json& v = parent.at(key);
    if (!v.is_number()) fail(where + key + ": expected a number, got " + type_name(v));
    const double d = v.get<double>();
    if (!std::isfinite(d) || d < lo || d > hi) {
      std::ostringstream range;
      range << "[" << lo << ", " << hi << "]";
      fail(where + key + ": expected a number in " + range.str() + ", got " + quote(v));
    }
    return d;
  }
  std::array<double, 3> triple(const json& parent, const std::string& key, const std::string& where,
                               std::array<double, 3> fallback) const {
    if (!parent.contains(key)) return fallback;
    const json& v = parent.at(key);
    if (!v.is_array() || v.size() != 3)
      fail(where + key + ": expected 3 numbers (RGB), got " + quote(v));
    std::array<double, 3> out{};
    for (std::size_t i = 0; i < 3; ++i) {
      if (!v[i].is_number() || !std::isfinite(v[i].get<double>()))
        fail(where + key + ": expected 3 finite numbers (RGB), got " + quote(v));
      out[i] = v[i].get<double>();
    }
    return out;
  }

 private:
  std::string file_;
};

bool is_hex64(const std::string& s) {
  if (s.size() != 64) return false;
  for (const char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace

RefineSpec::Grid RefineSpec::grid(int height, int width, int size) const {
  const double s = static_cast<double>(std::max(height, width)) / static_cast<double>(size);
  const double cell = std::max(1.0, subsample * s);
  auto cells = [&](double v) { return std::max(1, static_cast<int>(std::nearbyint(v))); };
  return {cells(static_cast<double>(height) / cell), cells(static_cast<double>(width) / cell),
          cells(radius * s / cell)};
}

void RefineSpec::validate() const {
  auto check = [](const char* name, double v, double hi) {
    if (!(v > 0 && v <= hi)) {
      std::ostringstream msg;
      msg << name << ": expected a number in (0, " << hi << "], got " << v;
      throw OptionError("refine", msg.str());
    }
  };
  check("radius", radius, kMaxRadius);
  check("subsample", subsample, kMaxSubsample);
  check("eps", eps, 1);
  check("softness", softness, 1);
}

std::pair<int, int> PreprocessSpec::resized_shape(int height, int width) const {
  if (height < 1 || width < 1) {
    throw Error("image", "expected at least 1x1, got " + std::to_string(width) + "x" +
                             std::to_string(height));
  }
  const double scale = static_cast<double>(size) / static_cast<double>(std::max(height, width));
  // std::nearbyint rounds half to even in the default rounding mode, as Python's round().
  auto fit = [&](int side) {
    const double r = std::nearbyint(static_cast<double>(side) * scale);
    return std::min(size, std::max(1, static_cast<int>(r)));
  };
  return {fit(height), fit(width)};
}

void PreprocessSpec::validate() const {
  auto fail = [](const std::string& reason) { throw Error("preprocessing", reason); };
  if (size < 32 || size % 32 != 0)
    fail("size: expected a positive multiple of 32, got " + std::to_string(size));
  for (const double s : std) {
    if (!(s > 0)) fail("std: expected positive values, got " + std::to_string(s));
  }
  if (!(max_pixel_value > 0))
    fail("max_pixel_value: expected a positive number, got " + std::to_string(max_pixel_value));
}

Manifest Manifest::load(const std::filesystem::path& path) {
  std::filesystem::path file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) file = path / "manifest.json";
  if (!std::filesystem::exists(file, ec)) {
    throw Error(file.string(), "no such file (an artifact folder needs a manifest.json)");
  }
  std::vector<std::uint8_t> bytes;
  try {
    bytes = read_file(file, kMaxManifestBytes);  // a regular file, and not a huge one
  } catch (const Error& e) {
    throw Error(file.string(), "cannot read the manifest: " + e.reason());
  }
  return parse(std::string(bytes.begin(), bytes.end()), std::filesystem::absolute(file));
}

Manifest Manifest::parse(const std::string& text, const std::filesystem::path& source) {
  const std::string file = source.string();
  const Reader r(file);
  json j;
  if (text.size() > static_cast<std::size_t>(kMaxManifestBytes)) {
    r.fail("over " + std::to_string(kMaxManifestBytes) + " bytes (" + std::to_string(text.size()) +
           "); a manifest is a few kilobytes");
  }
  // Nesting is refused while parsing, before any recursion over the tree (dump, compare) could
  // run out of stack on a manifest of a million brackets.
  const json::parser_callback_t depth_check = [&](int depth, json::parse_event_t, json&) {
    if (static_cast<std::size_t>(depth) > kMaxDepth)
      r.fail("nested deeper than " + std::to_string(kMaxDepth) + " levels");
    return true;
  };
  try {
    j = json::parse(text, depth_check);
  } catch (const json::parse_error& e) {
    r.fail(std::string("not valid JSON: ") + e.what());
  }
  if (!j.is_object()) r.fail("expected a JSON object, got " + type_name(j));

  Manifest m;
  m.path_ = source;
  if (!j.contains("schema_version")) r.fail("missing field schema_version");
  const json& version = j.at("schema_version");
  if (!version.is_number_integer() || version.get<long long>() != kSchemaVersion) {
    r.fail("schema_version " + quote(version) + " is not supported: expected " +
           std::to_string(kSchemaVersion));
  }

  if (j.contains("model") && j.at("model").is_object()) {
    const std::string none;
    m.arch_ = r.string(j.at("model"), "arch", "model.", &none);
    m.encoder_name_ = r.string(j.at("model"), "encoder_name", "model.", &none);
  }

  const json& pre = r.object(j, "preprocessing", "");
  static const std::set<std::string> kKnown = {
      "size",           "mean",      "std",          "max_pixel_value", "pad_value",
      "pad_position",   "interpolation", "antialias", "channel_order",  "layout"};
  for (const auto& [key, value] : pre.items()) {
    if (!kKnown.count(key)) r.fail("preprocessing: unknown field " + quote(key));
  }
  PreprocessSpec& spec = m.preprocessing_;
  // Bounded before it is an int: a size of a billion, or 1e300, is refused, never cast.
  const double size = r.number(pre, "size", "preprocessing.", spec.size, 32, kMaxInputSize);
  if (size != std::floor(size))
    r.fail("preprocessing.size: expected an integer, got " + quote(pre.at("size")));
  spec.size = static_cast<int>(size);
  spec.mean = r.triple(pre, "mean", "preprocessing.", spec.mean);
  spec.std = r.triple(pre, "std", "preprocessing.", spec.std);
  spec.max_pixel_value =
      r.number(pre, "max_pixel_value", "preprocessing.", spec.max_pixel_value, 1e-6, 65535);
  spec.pad_value = r.number(pre, "pad_value", "preprocessing.", spec.pad_value, 0, 65535);
  auto expect = [&](const std::string& key, const std::string& wanted) {
    const std::string got = r.string(pre, key, "preprocessing.", &wanted);
    if (got != wanted) {
      r.fail("preprocessing." + key + ": only \"" + wanted + "\" is supported, got " + quote(got));
    }
  };
  expect("pad_position", "bottom_right");
  expect("interpolation", "bilinear");
  expect("channel_order", "RGB");
  expect("layout", "NCHW");
  if (pre.contains("antialias") && pre.at("antialias") != false)
    r.fail("preprocessing.antialias: only false is supported, got " + quote(pre.at("antialias")));
  try {
    spec.validate();
  } catch (const Error& e) {
    r.fail(e.what());
  }

  if (j.contains("output")) {
    const json& out = r.object(j, "output", "");
    m.threshold_ = r.number(out, "threshold", "output.", 0.5, 0, 1);
    if (!(m.threshold_ > 0 && m.threshold_ < 1))
      r.fail("output.threshold: expected a value in (0, 1), got " + std::to_string(m.threshold_));
    const std::string logits = "logits";
    const std::string kind = r.string(out, "kind", "output.", &logits);
    if (kind != "logits") r.fail("output.kind: only \"logits\" is supported, got " + quote(kind));
    if (out.contains("refine")) {
      const json& ref = r.object(out, "refine", "output.");
      static const std::set<std::string> kRefine = {"method", "radius", "eps", "subsample", "softness"};
      for (const auto& [key, value] : ref.items()) {
        if (!kRefine.count(key)) r.fail("output.refine: unknown field " + quote(key));
      }
      const std::string guided = "guided";
      const std::string method = r.string(ref, "method", "output.refine.", &guided);
      if (method != "guided") r.fail("output.refine.method: only \"guided\" is supported, got " + quote(method));
      RefineSpec spec;
      spec.radius = r.number(ref, "radius", "output.refine.", spec.radius, 0, RefineSpec::kMaxRadius);
      spec.subsample = r.number(ref, "subsample", "output.refine.", spec.subsample, 0, RefineSpec::kMaxSubsample);
      spec.eps = r.number(ref, "eps", "output.refine.", spec.eps, 0, 1);
      spec.softness = r.number(ref, "softness", "output.refine.", spec.softness, 0, 1);
      try {
        spec.validate();
      } catch (const Error& e) {
        r.fail("output.refine." + e.reason());
      }
      m.refine_ = spec;
    }
  }

  const json& arts = r.object(j, "artifacts", "");
  for (const auto& [name, entry] : arts.items()) {
    if (entry.is_null()) continue;
    if (name.size() > kMaxQuoted) r.fail("artifacts: a name of " + std::to_string(name.size()) + " bytes");
    const std::string where = "artifacts." + name + ".";
    if (!entry.is_object()) r.fail("artifacts." + name + ": expected an object, got " + type_name(entry));
    ArtifactEntry a;
    a.name = name;
    a.file = r.string(entry, "file", where);
    const std::filesystem::path fp(a.file);
    if (a.file.empty() || a.file.size() > 255 || fp.is_absolute() || fp.has_parent_path() ||
        a.file == "..")
      r.fail(where + "file: expected a file name inside the artifact folder, got " + quote(a.file));
    a.format = r.string(entry, "format", where, &name);
    const std::string fp32 = "fp32", cpu = "cpu";
    a.precision = r.string(entry, "precision", where, &fp32);
    if (a.precision != "fp32" && a.precision != "fp16" && a.precision != "int8")
      r.fail(where + "precision: expected \"fp32\", \"fp16\" or \"int8\", got " +
             quote(a.precision));
    if (a.precision == "int8" && a.format != "onnx")
      r.fail(where + "precision: int8 is for ONNX models (format \"onnx\"), got format " +
             quote(a.format));
    a.device = r.string(entry, "device", where, &cpu);
    a.sha256 = r.string(entry, "sha256", where);
    if (!is_hex64(a.sha256))
      r.fail(where + "sha256: expected 64 lower-case hex digits, got " + quote(a.sha256));
    if (const auto parity = entry.find("parity"); parity != entry.end() && parity->is_object()) {
      const auto passed = parity->find("passed");
      a.verified = passed != parity->end() && passed->is_boolean() && passed->get<bool>();
    }
    m.artifacts_.emplace(name, std::move(a));
  }
  if (m.artifacts_.empty()) r.fail("artifacts: expected at least one artifact, got none");
  return m;
}

const ArtifactEntry& Manifest::artifact(const std::string& name) const {
  const auto it = artifacts_.find(name);
  if (it == artifacts_.end()) {
    std::string have;
    for (const auto& [key, value] : artifacts_) have += (have.empty() ? "" : ", ") + key;
    throw Error(path_.string(), "no artifact \"" + name + "\" (it lists: " + have + ")");
  }
  return it->second;
}

std::filesystem::path Manifest::artifact_path(const std::string& name) const {
  return dir() / artifact(name).file;
}

void Manifest::verify_artifact(const std::string& name) const { (void)read_verified_artifact(name); }

std::vector<std::uint8_t> Manifest::read_verified_artifact(const std::string& name) const {
  const ArtifactEntry& a = artifact(name);
  const std::filesystem::path file = dir() / a.file;
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec))
    throw Error(file.string(), "no such file (listed in " + path_.filename().string() + ")");
  std::vector<std::uint8_t> bytes = read_file(file, kMaxArtifactBytes);
  const std::string actual = sha256_hex({reinterpret_cast<const char*>(bytes.data()), bytes.size()});
  if (actual != a.sha256) {
    throw Error(file.string(), "sha256 mismatch: expected " + a.sha256 + ", got " + actual +
                                   " (the file does not match manifest.json; re-export it)");
  }
  return bytes;
}

}  // namespace carseg
