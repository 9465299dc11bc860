#include "graph/wire.hpp"

#include "core/error.hpp"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <charconv>
#include <climits>
#include <string>

namespace smp::graph {

namespace {

// The bytes of a model file with its graph's large initializers' raw_data fields cut out
// (ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.raw_data = 9; the lengths of the
// messages around them rewritten). spans[i]: where initializer i's raw_data lies in the file
// ({0, -1}: left in). False, and nothing promised, on anything this walk does not expect (a group,
// a length past the end): protobuf's own parse of the whole file then says what is wrong.
class WireCutter {
 public:
  WireCutter(const char* base, size_t size, int64_t min_bytes) : base_(base), size_(size), min_bytes_(min_bytes) {}
  bool cut(std::string& out, std::vector<RawSpan>& spans) {
    spans_ = &spans;
    return message(0, size_, 0, out);
  }

 private:
  // depth 0: ModelProto, 1: GraphProto, 2: TensorProto (an initializer).
  bool message(size_t at, size_t end, int depth, std::string& out) {
    RawSpan raw;
    while (at < end) {
      const size_t field_start = at;
      uint64_t key = 0;
      if (!varint(at, end, key)) return false;
      const uint64_t field = key >> 3, wire = key & 7;
      uint64_t v = 0;
      switch (wire) {
        case 0:
          if (!varint(at, end, v)) return false;
          break;
        case 1:
          if (end - at < 8) return false;
          at += 8;
          break;
        case 5:
          if (end - at < 4) return false;
          at += 4;
          break;
        case 2: {
          if (!varint(at, end, v) || v > end - at) return false;
          const size_t body = at;
          at += static_cast<size_t>(v);
          if ((depth == 0 && field == 7) || (depth == 1 && field == 5)) {
            std::string inner;
            if (!message(body, at, depth + 1, inner)) return false;
            put_varint(out, key);
            put_varint(out, inner.size());
            out += inner;
            continue;
          }
          if (depth == 2 && field == 9) {  // the last raw_data counts, as in protobuf
            if (static_cast<int64_t>(v) >= min_bytes_) {
              raw = RawSpan{body, static_cast<int64_t>(v)};
              continue;
            }
            raw = RawSpan{};
          }
          break;
        }
        default:
          return false;  // groups (3, 4) or not a wire type
      }
      out.append(base_ + field_start, at - field_start);
    }
    if (at != end) return false;
    if (depth == 2) spans_->push_back(raw);
    return true;
  }
  bool varint(size_t& at, size_t end, uint64_t& v) const {
    v = 0;
    for (int shift = 0; shift < 64 && at < end; shift += 7) {
      const auto b = static_cast<uint8_t>(base_[at++]);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  static void put_varint(std::string& out, uint64_t v) {
    while (v >= 0x80) {
      out += static_cast<char>((v & 0x7f) | 0x80);
      v >>= 7;
    }
    out += static_cast<char>(v);
  }
  const char* base_;
  size_t size_;
  int64_t min_bytes_;
  std::vector<RawSpan>* spans_ = nullptr;
};


}  // namespace

bool parse_model_proto(const char* data, size_t size, int64_t min_bytes, onnx::ModelProto& model, std::vector<RawSpan>& spans) {
  spans.clear();
  if (size > static_cast<size_t>(INT_MAX)) return false;
  std::string cut;
  if (min_bytes >= 0 && !WireCutter(data, size, min_bytes).cut(cut, spans)) spans.clear();
  const char* p = spans.empty() ? data : cut.data();
  const size_t n = spans.empty() ? size : cut.size();
  google::protobuf::io::ArrayInputStream raw(p, static_cast<int>(n));
  google::protobuf::io::CodedInputStream cis(&raw);
  cis.SetTotalBytesLimit(INT_MAX);
  return model.ParseFromCodedStream(&cis) && cis.ConsumedEntireMessage();
}

ExternalData external_data_of(const onnx::TensorProto& t, const std::filesystem::path& base_dir, const std::string& file) {
  const std::string where = "initializer '" + t.name() + "': external_data ";
  auto number = [&](const onnx::StringStringEntryProto& kv) {
    const std::string& v = kv.value();
    int64_t x = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (ec == std::errc::result_out_of_range) throw_bad_input(file, where + kv.key() + " " + v + " is too large");
    if (v.empty() || ec != std::errc() || end != v.data() + v.size())
      throw_bad_input(file, where + kv.key() + " '" + v + "' is not a number");
    return x;
  };
  std::string location;
  ExternalData e;
  for (const auto& kv : t.external_data()) {
    if (kv.key() == "location") location = kv.value();
    else if (kv.key() == "offset") e.offset = number(kv);
    else if (kv.key() == "length") e.length = number(kv);
  }
  if (location.empty()) throw_bad_input(file, where + "has no location");
  if (e.offset < 0) throw_bad_input(file, where + "offset is negative");
  if (e.length < -1) throw_bad_input(file, where + "length is negative");
  e.file = base_dir / location;
  return e;
}

}  // namespace smp::graph
