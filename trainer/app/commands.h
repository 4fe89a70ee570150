#pragma once
/// Subcommands of the `autorep` executable. Each group adds its subcommands to the app and
/// returns, per subcommand, the function that runs it once the command line is parsed.

#include <functional>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace autorep::trainer::engine::dist {
struct Options;
}

namespace autorep::trainer::app {

struct Command {
  CLI::App* app = nullptr;     ///< the parsed subcommand
  std::function<int()> run;    ///< runs it; returns the exit status
};
using Commands = std::vector<Command>;

/// train, eval, count
void add_training_commands(CLI::App& app, Commands& out);
/// bench gate, bench step
void add_bench_commands(CLI::App& app, Commands& out);
/// export, inspect, verify (the autorep.relu-mask export, cli_export.cpp)
void add_export_commands(CLI::App& app, Commands& out);
/// sweep (cli_sweep.cpp)
void add_sweep_commands(CLI::App& app, Commands& out);

/// --dist-backend and --dist-timeout of a command that may run as one of several processes.
void add_dist_options(CLI::App& command, engine::dist::Options& options);

}  // namespace autorep::trainer::app
