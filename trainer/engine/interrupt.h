#pragma once
/// Stopping on SIGINT and SIGTERM (what a terminal, Slurm and Kubernetes send before they kill a
/// job): the first signal only sets a flag, the training loop finishes its step, writes last.pt
/// and returns; a second signal ends the process at once.

#include <stdexcept>
#include <string>

namespace autorep::trainer::engine::interrupt {

/// Thrown by the training loop once last.pt holds the interrupted run (what() says where and
/// how to continue; the loop has already reported it) and by a sweep before its next run.
/// `autorep` exits with exit_code(signal).
struct Interrupted : std::runtime_error {
  Interrupted(int signal, const std::string& message) : std::runtime_error(message), signal(signal) {}
  int signal;
};

/// Installs the handlers (idempotent). `autorep train` and `autorep sweep` call it first.
void install();

/// The signal that asked the run to stop (SIGINT or SIGTERM), or 0.
int requested();

/// Forgets a request (tests, and a process that handled one and goes on).
void clear();

/// The exit status of a process stopped by `signal`: 128 + its number (130, 143).
int exit_code(int signal);

/// "SIGINT", "SIGTERM" or "signal N".
const char* name(int signal);

}  // namespace autorep::trainer::engine::interrupt
