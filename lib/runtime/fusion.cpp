#include "runtime/fusion.hpp"

#include <algorithm>
#include <cmath>

namespace smp::runtime {

namespace {

class Matcher {
 public:
  Matcher(const graph::Graph& g, const std::vector<int>& stage_nodes) : g_(g), in_stage_(g.nodes.size(), 0), used_(g.nodes.size(), 0) {
    for (int n : stage_nodes) in_stage_[static_cast<size_t>(n)] = 1;
  }

  const graph::Node* node(int i) const { return i >= 0 ? &g_.nodes[static_cast<size_t>(i)] : nullptr; }
  bool is(const graph::Node* n, const char* op) const { return n && n->domain.empty() && n->op_type == op; }

  // The stage node producing value v, or -1.
  int producer(int v) const {
    int p = g_.value(v).producer;
    return p >= 0 && in_stage_[static_cast<size_t>(p)] && !used_[static_cast<size_t>(p)] ? p : -1;
  }
  // The only consumer of v (in the stage, v not a graph output), or -1.
  int sole_consumer(int v) const {
    const graph::Value& val = g_.value(v);
    if (val.is_output || val.consumers.size() != 1) return -1;
    int c = val.consumers[0];
    return in_stage_[static_cast<size_t>(c)] && !used_[static_cast<size_t>(c)] ? c : -1;
  }
  // A one-element float constant equal to `want` (within tol).
  bool scalar(int v, double want, double tol = 0) const {
    if (v < 0) return false;
    const graph::Value& val = g_.value(v);
    if (val.kind != graph::ValueKind::Constant || !val.data || val.numel() != 1) return false;
    if (val.dtype != DType::F32 && val.dtype != DType::F64) return false;
    return std::fabs(val.data->get_f64(0) - want) <= tol;
  }
  // The input of binary node n that is not v (-1 unless n has two inputs, one of them v).
  static int other(const graph::Node& n, int v) {
    if (n.inputs.size() != 2 || n.outputs.size() != 1) return -1;
    if (n.inputs[0] == v && n.inputs[1] != v) return n.inputs[1];
    if (n.inputs[1] == v && n.inputs[0] != v) return n.inputs[0];
    return -1;
  }
  static int out(const graph::Node& n) { return n.outputs.size() == 1 ? n.outputs[0] : -1; }
  void use(const std::vector<int>& ns) {
    for (int n : ns) used_[static_cast<size_t>(n)] = 1;
  }
  bool free(int n) const { return !used_[static_cast<size_t>(n)]; }

  // PyTorch's export of F.gelu (approximate='none'): y = x * (erf(x / sqrt2) + 1) * 0.5, with the
  // 0.5 applied last or to x first, and x / sqrt2 possibly written x * (1 / sqrt2).
  bool gelu(int erf_node, Fusion& f) const {
    constexpr double kSqrt2 = 1.41421356237309504880, kTol = 1e-6;
    const graph::Node& e = g_.nodes[static_cast<size_t>(erf_node)];
    if (e.inputs.size() != 1 || out(e) < 0) return false;
    int d = e.inputs[0];
    int nd = producer(d);
    if (nd < 0 || sole_consumer(d) != erf_node) return false;
    const graph::Node* dn = node(nd);
    int x = -1;
    if (is(dn, "Div") && dn->inputs.size() == 2 && scalar(dn->inputs[1], kSqrt2, kTol)) x = dn->inputs[0];
    else if (is(dn, "Mul") && dn->inputs.size() == 2 && scalar(dn->inputs[1], 1 / kSqrt2, kTol)) x = dn->inputs[0];
    else if (is(dn, "Mul") && dn->inputs.size() == 2 && scalar(dn->inputs[0], 1 / kSqrt2, kTol)) x = dn->inputs[1];
    if (x < 0 || g_.value(x).dtype != DType::F32) return false;
    int na = sole_consumer(out(e));
    if (na < 0 || !is(node(na), "Add") || !scalar(other(*node(na), out(e)), 1.0)) return false;
    int a = out(*node(na));
    int n1 = a >= 0 ? sole_consumer(a) : -1;
    if (n1 < 0 || !is(node(n1), "Mul")) return false;
    int o1 = other(*node(n1), a);
    std::vector<int> chain{nd, erf_node, na, n1};
    int y = -1;
    if (o1 == x) {  // (x * a) * 0.5
      int m = out(*node(n1));
      int n2 = m >= 0 ? sole_consumer(m) : -1;
      if (n2 < 0 || !is(node(n2), "Mul") || !scalar(other(*node(n2), m), 0.5)) return false;
      chain.push_back(n2);
      y = out(*node(n2));
    } else if (o1 >= 0) {  // (x * 0.5) * a
      int nh = producer(o1);
      if (nh < 0 || !is(node(nh), "Mul") || sole_consumer(o1) != n1 || !scalar(other(*node(nh), x), 0.5)) return false;
      chain.push_back(nh);
      y = out(*node(n1));
    }
    if (y < 0 || g_.value(y).shape != g_.value(x).shape || g_.value(d).shape != g_.value(x).shape ||
        g_.value(y).dtype != DType::F32)
      return false;
    std::sort(chain.begin(), chain.end());
    for (int n : chain)
      if (!free(n)) return false;
    f.op = graph::Op::Gelu;
    f.nodes = chain;
    f.node = graph::Node{};
    f.node.name = g_.nodes[static_cast<size_t>(chain.back())].name;
    f.node.op_type = "Gelu";
    f.node.inputs = {x};
    f.node.outputs = {y};
    return true;
  }

  // A Transpose of a 2-D float B (perm [1, 0]) read only by a MatMul, as its second input, with
  // an A of at least 2 dims: A . Bᵀ in one product (sgemm's transB), without the transposed
  // copy, and B's gradient made in B's layout. PyTorch exports every Linear layer's weight
  // [out, in] this way: transposed for every microbatch, its gradient transposed back.
  bool transposed_product(int tn, Fusion& f) const {
    const graph::Node& t = g_.nodes[static_cast<size_t>(tn)];
    if (t.inputs.size() != 1 || out(t) < 0) return false;
    const int b = t.inputs[0], bt = out(t);
    if (b < 0 || g_.value(b).dtype != DType::F32 || g_.value(b).shape.size() != 2) return false;
    if (t.attr_ints("perm", {1, 0}) != std::vector<int64_t>{1, 0}) return false;
    const int mn = sole_consumer(bt);
    if (mn < 0 || !is(node(mn), "MatMul")) return false;
    const graph::Node& m = *node(mn);
    if (m.inputs.size() != 2 || m.inputs[1] != bt || m.inputs[0] == bt || out(m) < 0) return false;
    const graph::Value& a = g_.value(m.inputs[0]);
    if (a.dtype != DType::F32 || a.shape.size() < 2 || g_.value(out(m)).dtype != DType::F32) return false;
    if (!free(tn) || !free(mn)) return false;
    f.op = graph::Op::MatMulTransB;
    f.nodes = {std::min(tn, mn), std::max(tn, mn)};
    f.node = graph::Node{};
    f.node.name = m.name;
    f.node.op_type = "MatMulTransB";
    f.node.inputs = {m.inputs[0], b};
    f.node.outputs = {out(m)};
    return true;
  }

 private:
  const graph::Graph& g_;
  std::vector<uint8_t> in_stage_, used_;
};

bool has_kernel(const KernelTable& t, graph::Op op) { return t[static_cast<size_t>(op)].prepare != nullptr; }

}  // namespace

std::vector<Fusion> find_fusions(const graph::Graph& g, const std::vector<int>& stage_nodes, const KernelTable& kernels) {
  std::vector<Fusion> out;
  Matcher m(g, stage_nodes);
  // Per fused op the backend has a kernel for: every free node of the chain's anchor type
  // (the node a match starts from), matched and claimed in stage order.
  auto scan = [&](graph::Op op, const char* anchor, bool (Matcher::*match)(int, Fusion&) const) {
    if (!has_kernel(kernels, op)) return;
    for (int n : stage_nodes) {
      if (!m.free(n) || !m.is(m.node(n), anchor)) continue;
      Fusion f;
      if ((m.*match)(n, f)) {
        m.use(f.nodes);
        out.push_back(std::move(f));
      }
    }
  };
  scan(graph::Op::Gelu, "Erf", &Matcher::gelu);
  scan(graph::Op::MatMulTransB, "Transpose", &Matcher::transposed_product);
  std::sort(out.begin(), out.end(), [](const Fusion& a, const Fusion& b) { return a.nodes.back() < b.nodes.back(); });
  return out;
}

}  // namespace smp::runtime
