// smp-run: train a plan (one worker per device) or run a model's forward pass.
#include "common.hpp"

int main(int argc, char** argv) {
  CLI::App app{"smp-run: train a partition plan with one worker per device, in its pipelined schedule.\n"
               "Not implemented yet in this version: training and --forward arrive with the training engine."};
  smp::app::setup_app(app);
  std::string plan;
  app.add_option("PLAN", plan, "plan.json written by smp-plan");
  SMP_PARSE(app, argc, argv);
  return smp::app::guarded_main([&]() -> int {
    smp::throw_failure("smp-run", "training is not implemented in this version of smp",
                       "use smp-plan to partition a model; smp-run arrives with the training engine");
  });
}
