// smp-profile: measure per-node cost on this machine's device.
#include "common.hpp"

int main(int argc, char** argv) {
  CLI::App app{"smp-profile: measure what each layer of an ONNX model costs (time, memory) on this device.\n"
               "Not implemented yet in this version: profiling needs the training engine."};
  smp::app::setup_app(app);
  std::string model;
  app.add_option("MODEL", model, "ONNX model to profile");
  SMP_PARSE(app, argc, argv);
  return smp::app::guarded_main([&]() -> int {
    smp::throw_failure("smp-profile", "profiling is not implemented in this version of smp",
                       "smp-plan estimates costs from a roofline model meanwhile");
  });
}
