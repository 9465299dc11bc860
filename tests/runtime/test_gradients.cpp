// Every gradient rule against central finite differences: each op runs twice, once with its
// float inputs as activations from an earlier stage (gradients from backward, B and W fused)
// and once as parameters (gradients from backward_input then backward_weight).
#include <doctest/doctest.h>

#include "gradient_cases.hpp"

#include <fmt/format.h>

#include <cmath>
#include <functional>

using namespace smp;
using namespace smp::test;
using runtime::Tensor;

namespace {

void check_case(const Case& c, bool as_param, int threads) {
  runtime::CpuBackend be(threads);
  TinyGraph tg;
  Maker mk{tg, as_param, 1, {}, {}, &be};
  c.build(tg, mk);
  runtime::ExecutorOptions opts;
  opts.batch_statistics = c.batch_statistics;
  runtime::StageExecutor ex(tg.g, be, opts);

  std::vector<Tensor> inputs;
  for (int v : ex.inputs()) {
    if (mk.float_inputs.count(v)) inputs.push_back(be.from_host(DType::F32, tg.g.value(v).shape, mk.float_inputs[v].data()));
    else inputs.push_back(mk.feeds.at(v));
  }
  // L = sum_k R_k . out_k
  std::vector<Tensor> R;
  uint32_t rs = 1000;
  for (int o : ex.outputs()) {
    auto r = random_floats(static_cast<size_t>(tg.g.value(o).numel()), rs++);
    R.push_back(be.from_host(DType::F32, tg.g.value(o).shape, r.data()));
  }
  auto loss = [&](int mb) {
    auto outs = ex.forward(mb, inputs);
    ex.drop(mb);
    double L = 0;
    for (size_t k = 0; k < outs.size(); ++k) {
      const float* y = outs[k].data<float>();
      const float* r = R[k].data<float>();
      for (int64_t i = 0; i < outs[k].numel(); ++i) L += static_cast<double>(y[i]) * r[i];
    }
    return L;
  };

  ex.zero_grad();
  ex.forward(0, inputs);
  std::vector<Tensor> dins;
  if (as_param) {
    dins = ex.backward_input(0, R);
    CHECK(ex.pending() <= 1);
    ex.backward_weight(0);
  } else {
    dins = ex.backward(0, R);
  }
  CHECK(ex.pending() == 0);

  // (tensor to perturb, analytic gradient) pairs
  std::vector<std::pair<Tensor, Tensor>> checks;
  std::vector<std::string> names;
  for (size_t i = 0; i < ex.inputs().size(); ++i)
    if (ex.input_gets_gradient(i)) {
      REQUIRE(dins[i].defined());
      checks.push_back({inputs[i], dins[i]});
      names.push_back(tg.g.value(ex.inputs()[i]).name);
    }
  for (int p : ex.parameters()) {
    checks.push_back({ex.parameter(p), ex.gradient(p)});
    names.push_back(tg.g.value(p).name);
  }
  REQUIRE(!checks.empty());
  const double eps = 1e-3, atol = 3e-3, rtol = 1e-2;
  int mb = 1;
  for (size_t c2 = 0; c2 < checks.size(); ++c2) {
    Tensor x = checks[c2].first;
    const float* an = checks[c2].second.data<float>();
    float* xp = x.data<float>();
    int64_t n = x.numel();
    int64_t step = std::max<int64_t>(1, n / 40);
    for (int64_t i = 0; i < n; i += step) {
      float orig = xp[i];
      xp[i] = static_cast<float>(orig + eps);
      double lp = loss(mb++);
      xp[i] = static_cast<float>(orig - eps);
      double lm = loss(mb++);
      xp[i] = orig;
      double fd = (lp - lm) / (2 * eps);
      double a = an[i];
      INFO(fmt::format("{} ({}): d/d{}[{}] analytic {} vs finite-difference {}", c.name,
                       as_param ? "parameters" : "activations", names[c2], i, a, fd));
      CHECK(std::fabs(a - fd) <= atol + rtol * std::fabs(fd));
    }
  }
}

}  // namespace

TEST_CASE("every gradient rule agrees with central finite differences") {
  for (int threads : {1, 2})
    for (const Case& c : gradient_cases()) {
      for (bool as_param : {false, true}) {
        CAPTURE(c.name);
        CAPTURE(as_param);
        CAPTURE(threads);
        check_case(c, as_param, threads);
      }
    }
}
