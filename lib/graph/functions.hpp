// ONNX functions inlined at load (internal to the loader). A model may call its own functions
// (ModelProto.functions: what torch.onnx.export writes with export_modules_as_functions, and
// what exporters built on onnxscript write for every module), and a standard op may be defined
// by a function body (MeanVarianceNormalization). smp runs neither as such: each call becomes the
// nodes of the function's body, its values renamed under the call's name, its attribute
// references resolved from the call (or the op's defaults), and calls inside bodies expanded in
// turn.
#pragma once

#include <onnx/onnx_pb.h>

#include <cstdint>
#include <string>

namespace smp::graph {

// Expands every call of a model-local function, and every ai.onnx node whose op smp has no
// kernel for but whose schema at `opset` has a (context-free) function body, in the main graph
// and in the subgraphs of its nodes; then drops the model's functions. A body written for another
// ai.onnx opset is read at the model's: one that uses an op whose inputs or attributes differ
// between the two opsets, a call with more inputs or outputs than its function, or calls nested
// deeper than 64 are bad input naming the call; so are functions that expand to over 2^20
// nodes.
void inline_functions(onnx::ModelProto& model, int64_t opset, const std::string& file);

}  // namespace smp::graph
