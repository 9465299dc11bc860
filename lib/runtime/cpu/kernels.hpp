// Declarations of the CPU kernels; the table (table.cpp) puts them in graph::Op order.
#pragma once

#include "runtime/backend.hpp"

namespace smp::runtime::cpu {

#define SMP_KERNEL(name)                                                                        \
  std::unique_ptr<KernelState> prep_##name(const NodeView& n);                                  \
  void fwd_##name(const KernelState& s, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in); \
  void bwd_##name(const KernelState& s, ExecContext& ctx, const GradIO& io);

SMP_KERNEL(matmul)
SMP_KERNEL(matmul_tb)
SMP_KERNEL(gemm)
SMP_KERNEL(conv)
SMP_KERNEL(conv_transpose)
SMP_KERNEL(rnn)
SMP_KERNEL(einsum)
SMP_KERNEL(binary)
SMP_KERNEL(where)
SMP_KERNEL(unary)
SMP_KERNEL(prelu)
SMP_KERNEL(clip)
SMP_KERNEL(cast)
SMP_KERNEL(identity)
SMP_KERNEL(dropout)
SMP_KERNEL(softmax)
SMP_KERNEL(layernorm)
SMP_KERNEL(instancenorm)
SMP_KERNEL(batchnorm)
SMP_KERNEL(reduce)
SMP_KERNEL(argmax)
SMP_KERNEL(global_maxpool)
SMP_KERNEL(cumsum)
SMP_KERNEL(scatter)
SMP_KERNEL(gather_nd)
SMP_KERNEL(depth_space)
SMP_KERNEL(one_hot)
SMP_KERNEL(grid_sample)
SMP_KERNEL(quantize)
SMP_KERNEL(dequantize)
SMP_KERNEL(dynamic_quantize)
SMP_KERNEL(matmul_integer)
SMP_KERNEL(conv_integer)
SMP_KERNEL(fake_quantize)
SMP_KERNEL(random)
SMP_KERNEL(dft)
SMP_KERNEL(window)
SMP_KERNEL(mel_weights)
SMP_KERNEL(variadic)
SMP_KERNEL(lpnorm)
SMP_KERNEL(lrn)
SMP_KERNEL(topk)
SMP_KERNEL(eye_like)
SMP_KERNEL(pool)
SMP_KERNEL(global_avgpool)
SMP_KERNEL(reshape)
SMP_KERNEL(transpose)
SMP_KERNEL(concat)
SMP_KERNEL(split)
SMP_KERNEL(slice)
SMP_KERNEL(gather)
SMP_KERNEL(expand)
SMP_KERNEL(tile)
SMP_KERNEL(trilu)
SMP_KERNEL(pad)
SMP_KERNEL(gather_elements)
SMP_KERNEL(resize)
SMP_KERNEL(shape)
SMP_KERNEL(size)
SMP_KERNEL(constant)
SMP_KERNEL(constant_of_shape)
SMP_KERNEL(range)
SMP_KERNEL(sce_loss)
SMP_KERNEL(nll_loss)
SMP_KERNEL(tp_copy)
SMP_KERNEL(tp_allreduce)
SMP_KERNEL(tp_vocab_gather)
SMP_KERNEL(tp_sce_loss)

#undef SMP_KERNEL

}  // namespace smp::runtime::cpu
