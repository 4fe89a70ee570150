// The `autorep` command line: one subcommand per job (main.cpp only calls run_command_line, so
// the executable's own translation unit needs no LibTorch header).
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <malloc.h>

#include <csignal>

#include <iostream>

#include "trainer/app/cli_main.h"
#include "trainer/app/commands.h"
#include "trainer/engine/distributed.h"
#include "trainer/engine/interrupt.h"

namespace {
// In a multi-process run every rank may report an error; each says which rank it is.
std::string error_prefix() {
  const auto* g = autorep::trainer::engine::dist::current();
  return g == nullptr ? "autorep: error: " : "autorep (rank " + std::to_string(g->rank()) + "): error: ";
}
}  // namespace

namespace autorep::trainer::app {

int run_command_line(int argc, char** argv) {
  // Training allocates and frees the same large activation buffers every step; glibc's defaults
  // return them to the system and page-fault them back in each time.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  // Past a file-size limit a write fails with EFBIG (and the command says which file) instead of
  // the process being killed.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"autorep: learn which ReLUs a CNN keeps under a ReLU budget, replace the rest by polynomials, "
               "and export masks for private inference"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("autorep ") + AUTOREP_VERSION);
  Commands commands;
  add_training_commands(app, commands);
  add_export_commands(app, commands);
  add_sweep_commands(app, commands);
  add_bench_commands(app, commands);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (const auto& c : commands)
      if (c.app->parsed()) return c.run();
  } catch (const autorep::trainer::engine::interrupt::Interrupted& e) {
    return autorep::trainer::engine::interrupt::exit_code(e.signal);  // the run or sweep has said where it stopped
  } catch (const c10::Error& e) {
    std::cerr << error_prefix() << e.what_without_backtrace() << std::endl;
    return 1;
  } catch (const std::exception& e) {
    std::cerr << error_prefix() << e.what() << std::endl;
    return 1;
  }
  return 0;
}

}  // namespace autorep::trainer::app
