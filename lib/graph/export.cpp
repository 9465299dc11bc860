#include "graph/export.hpp"

#include "core/error.hpp"
#include "core/io.hpp"

#include <onnx/onnx_pb.h>

#include <climits>
#include <fstream>

namespace smp::graph {

namespace fs = std::filesystem;

namespace {

std::string external_location(const onnx::TensorProto& t, int64_t* offset, int64_t* length) {
  std::string loc;
  *offset = 0;
  *length = -1;
  for (const auto& kv : t.external_data()) {
    if (kv.key() == "location") loc = kv.value();
    else if (kv.key() == "offset") *offset = std::stoll(kv.value());
    else if (kv.key() == "length") *length = std::stoll(kv.value());
  }
  return loc;
}

}  // namespace

void export_with_weights(const fs::path& source, const fs::path& dest, const std::map<std::string, TensorData>& weights) {
  std::string bytes = read_file(source);
  onnx::ModelProto m;
  if (!m.ParseFromString(bytes)) throw_bad_input(source.string(), "not an ONNX model (protobuf parsing failed)");
  bytes.clear();
  bytes.shrink_to_fit();
  fs::path base = source.parent_path();
  size_t replaced = 0;
  int64_t total = 0;
  for (auto& t : *m.mutable_graph()->mutable_initializer()) {
    auto it = weights.find(t.name());
    if (it != weights.end()) {
      const TensorData& d = it->second;
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
      t.set_raw_data(d.bytes);
      ++replaced;
    } else if (t.data_location() == onnx::TensorProto::EXTERNAL) {
      int64_t off = 0, len = -1;
      std::string loc = external_location(t, &off, &len);
      std::ifstream in(base / loc, std::ios::binary);
      if (!in) throw_failure((base / loc).string(), "cannot read the external weights of '" + t.name() + "' to export");
      if (len < 0) {
        in.seekg(0, std::ios::end);
        len = static_cast<int64_t>(in.tellg()) - off;
      }
      std::string raw(static_cast<size_t>(len), '\0');
      in.seekg(off);
      in.read(raw.data(), len);
      t.clear_external_data();
      t.set_data_location(onnx::TensorProto::DEFAULT);
      t.set_raw_data(std::move(raw));
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
    std::string blob;
    for (auto& t : *m.mutable_graph()->mutable_initializer()) {
      int64_t off = static_cast<int64_t>(blob.size());
      blob += t.raw_data();
      int64_t len = static_cast<int64_t>(t.raw_data().size());
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
    }
    write_file_atomic(wfile, blob);
  }
  std::string out;
  if (!m.SerializeToString(&out)) throw_failure(dest.string(), "cannot serialize the model");
  write_file_atomic(dest, out);
}

}  // namespace smp::graph
