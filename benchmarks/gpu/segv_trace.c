/* A native stack on a crash, for the GPU check: LD_PRELOAD this into a process and a SIGSEGV,
 * SIGBUS, SIGILL or SIGFPE prints the C/C++ frames (glibc's backtrace) to stderr before the
 * process dies as it would have. Python's faulthandler prints the Python frames first and then
 * re-raises the signal into this handler. No debugger is needed on the GPU image, and a crash
 * on the device machine is seen once: the first two runs' crashes (AOTInductor's package load,
 * a CUDA tensor into the bindings) left only a Python stack.
 *
 *     cc -shared -fPIC -O1 -o segv_trace.so segv_trace.c
 *     LD_PRELOAD=$PWD/segv_trace.so python -m pytest ...
 */
#define _GNU_SOURCE
#include <execinfo.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

/* stderr as it was at start: pytest points fd 2 at a capture file while a test runs, and
 * that file is lost with the process. */
static int out_fd = STDERR_FILENO;

static void say(const char* s) {
  ssize_t unused = write(out_fd, s, strlen(s));
  (void)unused;
}

static void on_fatal(int sig) {
  void* frames[128];
  const int n = backtrace(frames, 128);
  say("\n*** segv_trace: fatal signal ");
  say(sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : sig == SIGILL ? "SIGILL" : "SIGFPE");
  say(", native stack (innermost first):\n");
  backtrace_symbols_fd(frames, n, out_fd);
  say("*** segv_trace: end of stack\n");
  signal(sig, SIG_DFL); /* die of the same signal, with the same exit status */
  raise(sig);
}

__attribute__((constructor)) static void segv_trace_install(void) {
  const int fd = dup(STDERR_FILENO);
  if (fd >= 0) out_fd = fd;
  void* warm[1];
  backtrace(warm, 1); /* loads libgcc_s now: no dlopen inside the handler */
  static char stack[1 << 16]; /* a handler for a stack overflow needs its own stack */
  stack_t ss;
  memset(&ss, 0, sizeof ss);
  ss.ss_sp = stack;
  ss.ss_size = sizeof stack;
  sigaltstack(&ss, NULL);
  const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE};
  for (unsigned i = 0; i < sizeof sigs / sizeof sigs[0]; ++i) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal;
    sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(sigs[i], &sa, NULL);
  }
}
