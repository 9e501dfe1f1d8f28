// carseg_infer's shared pieces: argument parsing, the options both commands take, and how the
// core's errors are worded for the command line. The work itself is libcarseg's.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "carseg/error.h"
#include "carseg/image_io.h"
#include "carseg/predictor.h"

namespace carseg::cli {

namespace fs = std::filesystem;
using nlohmann::json;

inline constexpr int kExitOk = 0;
inline constexpr int kExitSomeFailed = 1;
inline constexpr int kExitUsage = 2;

/// Bad usage or an unusable model/output: exit 2.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// --verbose: errors print the whole text of what failed underneath (torch's C++ backtrace),
/// not only their one line.
inline bool verbose = false;

// argv after the command, "--flag=value" split in two; values are taken up to the next flag.
class Args {
 public:
  Args(int argc, char** argv) {
    for (int i = 2; i < argc; ++i) {
      const std::string a = argv[i];
      const auto eq = a.find('=');
      if (a.rfind("--", 0) == 0 && eq != std::string::npos) {
        items_.push_back(a.substr(0, eq));
        items_.push_back(a.substr(eq + 1));
      } else {
        items_.push_back(a);
      }
    }
  }
  [[nodiscard]] bool done() const { return pos_ >= items_.size(); }
  std::string next() { return items_[pos_++]; }
  std::vector<std::string> values(const std::string& flag, bool many = false) {
    std::vector<std::string> out;
    while (!done() && !(items_[pos_].rfind("--", 0) == 0 && items_[pos_].size() > 2) &&
           (many || out.empty())) {
      out.push_back(next());
    }
    if (out.empty()) throw UsageError(flag + " needs a value");
    return out;
  }
  std::string value(const std::string& flag) { return values(flag)[0]; }
  long integer(const std::string& flag, long lo, long hi) { return parse_int(flag, value(flag), lo, hi); }

  static long parse_int(const std::string& flag, const std::string& s, long lo, long hi) {
    try {
      std::size_t n = 0;
      const long v = std::stol(s, &n);
      if (n == s.size() && v >= lo && v <= hi) return v;
    } catch (const std::exception&) {
    }
    throw UsageError(flag + ": expected an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got \"" + s + "\"");
  }

 private:
  std::vector<std::string> items_;
  std::size_t pos_ = 0;
};

// The core names options by field ("precision"); here they are flags ("--precision").
inline std::string flag_message(const carseg::OptionError& e) {
  std::string flag = e.field();
  std::replace(flag.begin(), flag.end(), '_', '-');
  return "--" + flag + ": " + e.reason();
}

struct Common {
  fs::path model;
  // The tool's default on the CPU: fused pre/post-processing (faster at every size; masks agree
  // with the reference to IoU >= 0.999, see the tests); --exact restores the library's
  // op-for-op default. oneDNN Graph fusion stays opt-in (--onednn-fusion): on the 2-core CPU it
  // took TorchScript batch 1 at 256 px from 41 to 36 ms, but batch 4 from 135 to 193 ms and
  // batch 1 at 512 px from 154 to 195 ms.
  carseg::PredictorOptions options = fast_defaults();
  std::vector<int> threads;  // --threads LIST; empty: default_threads()

  static carseg::PredictorOptions fast_defaults() {
    carseg::PredictorOptions o;
    o.exact = false;
    return o;
  }

  // Options both commands take; false when `flag` is not one of them.
  bool parse(const std::string& flag, Args& args) {
    if (flag == "--model") model = args.value(flag);
    else if (flag == "--device") options.device = args.value(flag);
    else if (flag == "--precision") options.precision = carseg::parse_precision(args.value(flag));
    else if (flag == "--backend") options.backend = carseg::parse_backend(args.value(flag));
    else if (flag == "--threads") threads = int_list(flag, args.value(flag), 1, 1024);
    else if (flag == "--no-graphs") options.use_cuda_graphs = false;
    else if (flag == "--exact") options.exact = true;
    else if (flag == "--onednn-fusion") options.onednn_fusion = true;
    else if (flag == "--no-refine") options.refine = false;
    else if (flag == "--softness") options.softness = number(flag, args.value(flag), 0, 1);
    else if (flag == "-v" || flag == "--verbose") verbose = true;
    else return false;
    return true;
  }

  static double number(const std::string& flag, const std::string& v, double lo, double hi) {
    char* end = nullptr;
    const double d = std::strtod(v.c_str(), &end);
    if (v.empty() || *end != '\0' || !(d > lo && d <= hi)) {
      throw UsageError(flag + ": expected a number in (" + std::to_string(lo).substr(0, 3) + ", " +
                       std::to_string(hi).substr(0, 3) + "], got \"" + v + "\"");
    }
    return d;
  }

  /// "1,8,32" -> {1, 8, 32}, each in [lo, hi].
  static std::vector<int> int_list(const std::string& flag, const std::string& v, int lo, int hi) {
    std::vector<int> out;
    std::stringstream ss(v);
    for (std::string part; std::getline(ss, part, ',');) {
      out.push_back(static_cast<int>(Args::parse_int(flag, part, lo, hi)));
    }
    if (out.empty()) throw UsageError(flag + ": expected numbers like 1,2,4, got \"" + v + "\"");
    return out;
  }

  /// Intra-op threads when --threads is not given: OMP_NUM_THREADS when set (torch has read
  /// it), else every CPU this process may use (its affinity and cgroup quota; torch's own
  /// default counts the machine's cores, which a container may not have).
  static int default_threads() {
    const char* omp = std::getenv("OMP_NUM_THREADS");
    if (omp != nullptr && *omp != '\0') return at::get_num_threads();
    return carseg::available_cpus();
  }

  /// Loads the model with `n_threads` intra-op threads (0: --threads' first, or the default).
  [[nodiscard]] carseg::Predictor load(const std::string& command, int n_threads = 0) const {
    if (model.empty()) throw UsageError(command + ": --model is required");
    if (n_threads <= 0) n_threads = threads.empty() ? default_threads() : threads.front();
    at::set_num_threads(n_threads);
    try {
      return carseg::Predictor(model, options);
    } catch (const c10::Error& e) {
      const std::string text = e.what_without_backtrace();
      throw carseg::Error(model.string(), "cannot load the model: " + text.substr(0, text.find('\n')),
                          e.what());
    }
  }

  [[nodiscard]] json describe(const carseg::Predictor& p) const {
    json refine = nullptr;
    if (p.refine()) {
      refine = {{"radius", p.refine()->radius}, {"eps", p.refine()->eps},
                {"subsample", p.refine()->subsample}, {"softness", p.refine()->softness}};
    }
    return {{"model", model.string()}, {"backend", p.backend_name()}, {"device", p.device().str()},
            {"precision", carseg::to_string(p.precision())}, {"refine", refine}};
  }
};

/// Reads argv: --help prints `help` (returns false: nothing to run); the flags both commands
/// take go to `common`; every other flag to `own(flag)`, which returns false for one it does
/// not know (a usage error naming the command).
template <class F>
bool parse_flags(Args& args, Common& common, const std::string& command, const char* help, F&& own) {
  while (!args.done()) {
    const std::string flag = args.next();
    if (flag == "-h" || flag == "--help") {
      std::cout << help;
      return false;
    }
    if (!common.parse(flag, args) && !own(flag)) {
      throw UsageError(command + ": unknown option " + flag + " (see carseg_infer " + command +
                       " --help)");
    }
  }
  return true;
}

inline void write_json(const fs::path& path, const json& j) {
  // File names are bytes, not always UTF-8: such a name is written with U+FFFD where a byte
  // is not UTF-8, never an exception instead of the report.
  const std::string text = j.dump(2, ' ', false, json::error_handler_t::replace) + "\n";
  carseg::write_file_atomic(path, {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
}

int cmd_infer(int argc, char** argv);
int cmd_bench(int argc, char** argv);

}  // namespace carseg::cli
