// Parsing an ONNX model's protobuf without copying its weights.
#pragma once

#include "graph/graph.hpp"

#include <onnx/onnx_pb.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

namespace smp::graph {

// Where an initializer's raw_data lies in the bytes a model was parsed from ({0, -1}: in the proto).
struct RawSpan {
  size_t offset = 0;
  int64_t length = -1;
};

// Parses the model in `size` bytes at `data`. With min_bytes >= 0, the raw_data of the graph's
// initializers of min_bytes or more is cut out before protobuf parses (protobuf would copy it):
// spans[i] then says where initializer i's raw_data lies in `data`, to be read there or set back;
// spans is empty where nothing was cut (min_bytes < 0, or a layout the cut does not expect, which
// protobuf then parses whole). False when protobuf cannot parse the bytes.
bool parse_model_proto(const char* data, size_t size, int64_t min_bytes, onnx::ModelProto& model, std::vector<RawSpan>& spans);

// Where an initializer stored outside the model lies: its external_data's location (relative to
// `base_dir`), offset and length. Bad input naming `file` (the model) when the location is
// missing or the offset or length is not a number, or negative.
ExternalData external_data_of(const onnx::TensorProto& t, const std::filesystem::path& base_dir, const std::string& file);

}  // namespace smp::graph
