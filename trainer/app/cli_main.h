#pragma once
/// The whole `autorep` command line: parses argv, runs the subcommand, turns errors into a
/// message and an exit status. main.cpp is only this call.

namespace autorep::trainer::app {

int run_command_line(int argc, char** argv);

}  // namespace autorep::trainer::app
