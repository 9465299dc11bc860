// The partition report smp-plan prints: one row per stage, the prediction, the baselines and
// the plan's speedup over each; or the same as JSON.
#pragma once

#include "plan/planner.hpp"

#include <nlohmann/json.hpp>

#include <string>

namespace smp::plan {

std::string format_report(const Plan& plan, const PlanInputs& in);
nlohmann::json report_json(const Plan& plan, const PlanInputs& in);

std::string human_bytes(double bytes);  // "1.5 GiB"

}  // namespace smp::plan
