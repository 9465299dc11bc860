// Host helpers of the CUDA kernels: tags, Strided iterations from the CPU's plans.
#include "runtime/cuda/ops.hpp"

#include <fmt/format.h>

namespace smp::runtime::cuda {

Tag tag_of(DType d) {
  switch (d) {
    case DType::F32: return kF32;
    case DType::BF16: return kBF16;
    case DType::F64: return kF64;
    case DType::I64: return kI64;
    case DType::I32: return kI32;
    case DType::U8: case DType::Bool: return kU8;
    case DType::I8: return kI8;
    default: SMP_CHECK(false, "the CUDA kernels handle no {} tensors", dtype_name(d));
  }
  return kF32;
}

Strided strided_from_bcast(const cpu::Bcast& b) {
  Strided s;
  SMP_CHECK(b.dims.size() <= static_cast<size_t>(kMaxDims) && b.st.size() <= 3, "broadcast of {} dims, {} operands",
            b.dims.size(), b.st.size());
  s.nd = static_cast<int>(b.dims.size());
  s.total = b.total;
  int64_t k = 1;
  for (int d = s.nd - 1; d >= 0; --d) {
    s.dims[d] = b.dims[static_cast<size_t>(d)];
    s.st[0][d] = k;
    k *= s.dims[d];
    for (size_t j = 0; j < b.st.size(); ++j) s.st[j + 1][d] = b.st[j][static_cast<size_t>(d)];
  }
  return s;
}

Strided strided_gather(const Shape& shape, const std::vector<int64_t>& st, int64_t base) {
  SMP_CHECK(shape.size() == st.size(), "strides for {} dims, shape {}", st.size(), shape_str(shape));
  // Merge adjacent dims where the source is contiguous across them; drop size-1 dims.
  std::vector<int64_t> dims, sst;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 1) continue;
    if (!dims.empty() && sst.back() == st[i] * shape[i]) {
      dims.back() *= shape[i];
      sst.back() = st[i];
      continue;
    }
    dims.push_back(shape[i]);
    sst.push_back(st[i]);
  }
  if (dims.empty()) {
    dims.push_back(1);
    sst.push_back(0);
  }
  SMP_CHECK(dims.size() <= static_cast<size_t>(kMaxDims), "a copy over {} dims (the CUDA kernels take {})", dims.size(), kMaxDims);
  Strided s;
  s.nd = static_cast<int>(dims.size());
  s.total = smp::numel(shape);
  int64_t k = 1;
  for (int d = s.nd - 1; d >= 0; --d) {
    s.dims[d] = dims[static_cast<size_t>(d)];
    s.st[0][d] = k;
    k *= s.dims[d];
    s.st[1][d] = sst[static_cast<size_t>(d)];
  }
  s.base[1] = base;
  return s;
}

ReduceGeom reduce_geom(const cpu::RGeom& g) {
  ReduceGeom r;
  // Merge adjacent kept dims that are contiguous in the input; the same for the reduced ones.
  auto merge = [](const std::vector<int64_t>& dims, const std::vector<int64_t>& str, int64_t* od, int64_t* os, int& n) {
    n = 0;
    for (size_t i = 0; i < dims.size(); ++i) {
      if (dims[i] == 1) continue;
      if (n > 0 && os[n - 1] == str[i] * dims[i]) {
        od[n - 1] *= dims[i];
        os[n - 1] = str[i];
        continue;
      }
      SMP_CHECK(n < kMaxDims, "a reduction over more than {} separate dims", kMaxDims);
      od[n] = dims[i];
      os[n] = str[i];
      ++n;
    }
  };
  merge(g.kdims, g.kstr, r.kdims, r.kstr, r.nk);
  merge(g.rdims, g.rstr, r.rdims, r.rstr, r.nr);
  r.nout = 1;
  for (int64_t d : g.kdims) r.nout *= d;
  r.rcount = g.rcount;
  return r;
}

ReduceGeom sum_to_geom(const Shape& dst_shape, const Shape& src_shape) {
  SMP_CHECK(cpu::broadcastable_to(dst_shape, src_shape), "{} does not broadcast to {}", shape_str(dst_shape), shape_str(src_shape));
  std::vector<int64_t> axes;
  size_t off = src_shape.size() - dst_shape.size();
  for (size_t i = 0; i < src_shape.size(); ++i) {
    int64_t d = i < off ? 1 : dst_shape[i - off];
    if (d == 1 && src_shape[i] != 1) axes.push_back(static_cast<int64_t>(i));
  }
  return reduce_geom(cpu::rgeom(src_shape, axes));
}

}  // namespace smp::runtime::cuda
