#pragma once
// Every test includes this instead of Catch directly. LibTorch pulls in glog, whose CHECK(cond)
// aborts instead of recording a Catch assertion: include torch first and let Catch own CHECK.
#include <torch/torch.h>
#undef CHECK
#include <catch2/catch.hpp>
