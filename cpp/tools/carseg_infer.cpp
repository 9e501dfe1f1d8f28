// carseg_infer: photos in, car masks and cutouts out (infer); latency and throughput (bench).
// The process-wide settings live here; each command is a file of its own, and the work is
// libcarseg's (Pipeline, Predictor, bench.h).
#include <malloc.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <string>

#include "cli.h"

namespace {

using namespace carseg::cli;

constexpr const char* kMainHelp = R"(usage: carseg_infer <command> [options]

commands:
  infer   segment photos: NAME_mask.png and a cutout per input, at the input's resolution
  bench   latency (p50/p90/p99) and throughput per batch size; end to end with --input

Run `carseg_infer <command> --help` for its options.
exit status: 0 all inputs ok, 1 some inputs failed, 2 bad usage or a model it cannot load
)";

// libgomp, torch's OpenMP, reads its spin-wait setting once, when it is loaded, before main: a
// thread waiting at a barrier spins 300,000 times before it sleeps. While decode and encode
// threads share the cores with the model, that spinning took 17% of the CPU time of a folder
// run (perf, 2-core CPU). GOMP_SPINCOUNT=30000 gave 11% more images per second end to end and
// the same batch-1 latency, measured side by side. Setting it means starting again, once; a
// user's own GOMP_SPINCOUNT or OMP_WAIT_POLICY is left as it is.
void restart_with_shorter_openmp_spin(char** argv) {
  if (std::getenv("GOMP_SPINCOUNT") != nullptr || std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  if (::setenv("GOMP_SPINCOUNT", "30000", /*overwrite=*/0) != 0) return;
  ::execv("/proc/self/exe", argv);
  ::unsetenv("GOMP_SPINCOUNT");  // no /proc: go on with the default
}

}  // namespace

int main(int argc, char** argv) {
  const std::string cmd = argc >= 2 ? argv[1] : "";
  if (cmd == "infer" || cmd == "bench") restart_with_shorter_openmp_spin(argv);
#if defined(M_MMAP_THRESHOLD)
  // Every photo allocates and frees buffers of megabytes (pixels, masks, tensors). glibc would
  // map and unmap each one from the kernel, and the page faults of touching fresh pages cost
  // more than the copies themselves; kept in the heap, they are reused from image to image.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's ceiling on 64-bit
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  // One arena: per-thread arenas are capped at 64 MiB heaps, so photo-sized buffers freed on
  // one thread and needed on another kept mapping fresh memory (measured: a third fewer page
  // faults over 64 photos, 5-7% more images per second).
  mallopt(M_ARENA_MAX, 1);
#endif
  try {
    if (cmd == "-h" || cmd == "--help") {
      std::cout << kMainHelp;
      return kExitOk;
    }
    if (cmd == "infer") return cmd_infer(argc, argv);
    if (cmd == "bench") return cmd_bench(argc, argv);
    if (cmd.empty()) {
      std::cerr << kMainHelp;
      return kExitUsage;
    }
    throw UsageError("unknown command \"" + cmd + "\" (expected infer or bench; see --help)");
  } catch (const carseg::OptionError& e) {
    std::cerr << "carseg_infer: error: " << flag_message(e) << "\n";
  } catch (const carseg::Error& e) {  // a model or an output it cannot use
    std::cerr << "carseg_infer: error: " << e.what() << "\n";
    if (verbose && !e.detail().empty()) std::cerr << e.detail() << "\n";
    else if (!e.detail().empty()) std::cerr << "(--verbose shows the full error)\n";
  } catch (const std::exception& e) {  // UsageError: bad usage
    std::cerr << "carseg_infer: error: " << e.what() << "\n";
  }
  return kExitUsage;
}
