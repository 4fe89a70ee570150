// The `autorep` executable: everything is in the app library (trainer/app/cli_main.cpp), so this
// translation unit compiles in a moment.
#include "trainer/app/cli_main.h"

int main(int argc, char** argv) { return autorep::trainer::app::run_command_line(argc, argv); }
