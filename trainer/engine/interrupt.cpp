#include "trainer/engine/interrupt.h"

#include <unistd.h>

#include <atomic>
#include <csignal>

namespace autorep::trainer::engine::interrupt {

namespace {

std::atomic<int> g_requested{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free flag");

extern "C" void on_signal(int signal) {
  int none = 0;
  // A second signal (of either kind) means "now": no checkpoint, straight out.
  if (!g_requested.compare_exchange_strong(none, signal)) ::_exit(exit_code(signal));
  static const char kMessage[] =
      "\nautorep: stopping after this step (last.pt is written); signal again to stop at once\n";
  [[maybe_unused]] const auto n = ::write(STDERR_FILENO, kMessage, sizeof(kMessage) - 1);
}

}  // namespace

void install() {
  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;  // reads and writes in flight go on; the loop polls the flag
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
}

int requested() { return g_requested.load(); }

void clear() { g_requested.store(0); }

int exit_code(int signal) { return 128 + signal; }

const char* name(int signal) {
  switch (signal) {
    case SIGINT: return "SIGINT";
    case SIGTERM: return "SIGTERM";
    default: return "a signal";
  }
}

}  // namespace autorep::trainer::engine::interrupt
