#include "graph/export.hpp"

#include "core/error.hpp"
#include "core/io.hpp"
#include "graph/loader.hpp"
#include "graph/wire.hpp"

#include <onnx/onnx_pb.h>

#include <climits>
#include <set>

namespace smp::graph {

namespace fs = std::filesystem;

namespace {

int64_t onnx_opset(const onnx::ModelProto& m) {
  for (const auto& o : m.opset_import())
    if (o.domain().empty() || o.domain() == "ai.onnx") return o.version();
  return 0;
}

// BatchNormalization in training mode -> inference mode; Dropout -> keep everything.
void to_inference_form(onnx::ModelProto& m, const fs::path& dest) {
  auto& g = *m.mutable_graph();
  const int64_t opset = onnx_opset(m);
  std::set<std::string> dropped;  // outputs that no longer exist
  for (auto& n : *g.mutable_node()) {
    if (!(n.domain().empty() || n.domain() == "ai.onnx")) continue;
    if (n.op_type() == "BatchNormalization" && n.output_size() > 1) {
      for (int k = 1; k < n.output_size(); ++k)
        if (!n.output(k).empty()) dropped.insert(n.output(k));
      while (n.output_size() > 1) n.mutable_output()->RemoveLast();
      for (auto& a : *n.mutable_attribute())
        if (a.name() == "training_mode") a.set_i(0);
    } else if (n.op_type() == "Dropout" && opset >= 12 && n.input_size() > 2) {
      while (n.input_size() > 2) n.mutable_input()->RemoveLast();
    }
  }
  if (dropped.empty()) return;
  for (const auto& n : g.node())
    for (const auto& in : n.input())
      if (dropped.count(in))
        throw_failure(dest.string(), "node '" + n.name() + "' reads the running statistics output '" + in + "' of a BatchNormalization",
                      "export with --export-mode training");
  for (const auto& o : g.output())
    if (dropped.count(o.name()))
      throw_failure(dest.string(), "graph output '" + o.name() + "' is a BatchNormalization's running statistics",
                    "export with --export-mode training");
  google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> vi;
  for (auto& v : *g.mutable_value_info())
    if (!dropped.count(v.name())) *vi.Add() = std::move(v);
  g.mutable_value_info()->Swap(&vi);
}

}  // namespace

void export_with_weights(const fs::path& source, const fs::path& dest, std::map<std::string, TensorData> weights,
                         ExportForm form) {
  // Parsed from its mapping with the large weights' bytes left there: those replaced by `weights`
  // are never read, the others are set back from the mapping.
  const Bytes bytes = map_file(source);
  onnx::ModelProto m;
  std::vector<RawSpan> spans;
  if (!parse_model_proto(bytes.data(), bytes.size(), 0, m, spans))
    throw_bad_input(source.string(), "not an ONNX model (protobuf parsing failed)");
  if (form == ExportForm::Inference) to_inference_form(m, dest);
  fs::path base = source.parent_path();
  size_t replaced = 0;
  int64_t total = 0;
  auto& inits = *m.mutable_graph()->mutable_initializer();
  SMP_CHECK(spans.empty() || spans.size() == static_cast<size_t>(inits.size()), "{}: {} initializers, {} raw-data spans",
            source.string(), inits.size(), spans.size());
  for (int i = 0; i < inits.size(); ++i) {
    onnx::TensorProto& t = inits[i];
    auto it = weights.find(t.name());
    if (it != weights.end()) {
      TensorData& d = it->second;
      Shape dims(t.dims().begin(), t.dims().end());
      if (static_cast<int32_t>(d.dtype) != t.data_type() || d.shape != dims)
        throw_failure(dest.string(), "trained tensor '" + t.name() + "' is " + std::string(dtype_name(d.dtype)) +
                                         shape_str(d.shape) + ", the model's initializer " + shape_str(dims));
      t.clear_float_data();
      t.clear_double_data();
      t.clear_int32_data();
      t.clear_int64_data();
      t.clear_external_data();
      t.set_data_location(onnx::TensorProto::DEFAULT);
      t.set_raw_data(std::move(d.bytes.str()));  // moved, not copied: the model is held once
      ++replaced;
    } else if (t.data_location() == onnx::TensorProto::EXTERNAL) {
      int64_t numel = 1;
      for (int64_t x : t.dims()) numel *= x;
      const int64_t expected = numel * static_cast<int64_t>(dtype_size(dtype_from_onnx(t.data_type())));
      const Bytes raw = read_external_bytes(external_data_of(t, base, source.string()), expected, "tensor '" + t.name() + "'");
      t.clear_external_data();
      t.set_data_location(onnx::TensorProto::DEFAULT);
      t.set_raw_data(raw.data(), raw.size());
    } else if (!spans.empty() && spans[static_cast<size_t>(i)].length >= 0) {
      const RawSpan& r = spans[static_cast<size_t>(i)];
      t.set_raw_data(bytes.data() + r.offset, static_cast<size_t>(r.length));
    }
    total += static_cast<int64_t>(t.raw_data().size());
  }
  if (replaced != weights.size())
    throw_failure(dest.string(), fmt::format("{} of {} trained tensors are not initializers of {}", weights.size() - replaced,
                                             weights.size(), source.string()));
  if (total > int64_t{INT_MAX} - (int64_t{64} << 20)) {
    // Too large for one protobuf: all weights go to one external data file beside it.
    fs::path wfile = dest;
    wfile += ".weights";
    // Streamed out tensor by tensor, each weight's bytes freed once written.
    write_file_atomic(wfile, [&](int fd) {
      int64_t off = 0;
      for (auto& t : *m.mutable_graph()->mutable_initializer()) {
        const auto len = static_cast<int64_t>(t.raw_data().size());
        if (!write_all(fd, t.raw_data().data(), t.raw_data().size())) return false;
        std::string().swap(*t.mutable_raw_data());  // clear_raw_data alone keeps the capacity
        t.clear_raw_data();
        t.set_data_location(onnx::TensorProto::EXTERNAL);
        auto add = [&](const std::string& k, const std::string& v) {
          auto* e = t.add_external_data();
          e->set_key(k);
          e->set_value(v);
        };
        add("location", wfile.filename().string());
        add("offset", std::to_string(off));
        add("length", std::to_string(len));
        off += len;
      }
      return true;
    });
  }
  // Serialized straight into the file: no second copy of the model in memory.
  write_file_atomic(dest, [&](int fd) { return m.SerializeToFileDescriptor(fd); });
}

}  // namespace smp::graph
