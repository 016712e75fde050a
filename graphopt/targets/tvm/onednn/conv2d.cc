// oneDNN convolutions as TVM global packed functions, called from Relax with call_dps_packed
// (graphopt/targets/tvm/onednn/offload.py builds the calls). Registered when the library is
// loaded:
//   graphopt.onednn.conv2d(x, w, bias, attrs, activation_args, out)
//   graphopt.onednn.conv2d_residual(x, w, bias, residual, attrs, activation_args, out)
// computing out = activation(conv2d(x, w) + bias [+ residual]) on float32 tensors, w OIHW.
// attrs = (stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, dilation_h,
// dilation_w, groups, activation, x_layout, residual_layout, out_layout); activation 0 none,
// 1 relu, 2 leaky relu (slope alpha), 3 clip(alpha, beta), with activation_args = float32
// [alpha, beta] (a constant tensor: float scalars would cost the VM a host function call each);
// layouts 0 NCHW, 1 NHWC (what oneDNN's AVX2 kernels use, so consecutive calls pass it on).
//
// oneDNN picks its own layouts: the weight is reordered once per primitive and weight buffer,
// the input in, the residual into the output and the output back on every call, each only when
// the chosen layout differs from the tensor's. Bias, residual (the `sum` post-op) and activation
// run inside the conv.
#include <dnnl.hpp>
#include <omp.h>
#include <tvm/ffi/container/shape.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/error.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>

#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

namespace ffi = tvm::ffi;
using dnnl::memory;
using Dims = memory::dims;

enum Attr { kStrideH, kStrideW, kPadTop, kPadLeft, kPadBottom, kPadRight, kDilationH, kDilationW,
            kGroups, kActivation, kXLayout, kResidualLayout, kOutLayout, kNumAttrs };
enum Activation { kNone = 0, kRelu = 1, kLeakyRelu = 2, kClip = 3, kTanh = 4 };
enum Layout { kNCHW = 0, kNHWC = 1 };

// Reordered weights are kept until they pass this size, then the cache starts over.
constexpr size_t kWeightCacheBytes = size_t(1) << 30;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// TVM's own thread count (TVM_NUM_THREADS, else OMP_NUM_THREADS, else its core estimate), so
// that oneDNN's OpenMP kernels and TVM's kernels in one model use the same number of threads.
int NumThreads() {
  static const int threads = []() -> int {
    if (auto f = ffi::Function::GetGlobal("runtime.NumThreads")) {
      int n = (*f)().cast<int>();
      if (n > 0) return n;
    }
    const char* env = std::getenv("TVM_NUM_THREADS");
    return env ? std::max(1, std::atoi(env)) : int(std::max(1u, std::thread::hardware_concurrency()));
  }();
  return threads;
}

void CheckTensor(const ffi::TensorView& t, const char* what, int ndim) {
  DLDataType dtype = t.dtype();
  if (t.ndim() != ndim || dtype.code != kDLFloat || dtype.bits != 32 || dtype.lanes != 1 ||
      t.device().device_type != kDLCPU || !t.IsContiguous()) {
    TVM_FFI_THROW(ValueError) << "graphopt.onednn.conv2d: expected " << what << " as a contiguous "
                              << ndim << "-d float32 CPU tensor, found " << t.ndim()
                              << "-d, dtype code " << int(dtype.code) << " bits " << int(dtype.bits);
  }
}

void* Data(const ffi::TensorView& t) {
  return static_cast<char*>(t.data_ptr()) + t.byte_offset();
}

// The logical NCHW dims of a tensor stored in `layout`.
Dims Shape4(const ffi::TensorView& t, int64_t layout = kNCHW) {
  if (layout == kNHWC) return {t.size(0), t.size(3), t.size(1), t.size(2)};
  return {t.size(0), t.size(1), t.size(2), t.size(3)};
}

memory::format_tag Tag(int64_t layout) {
  if (layout != kNCHW && layout != kNHWC) {
    TVM_FFI_THROW(ValueError) << "graphopt.onednn.conv2d: unknown layout " << layout
                              << " (expected 0 NCHW or 1 NHWC)";
  }
  return layout == kNHWC ? memory::format_tag::nhwc : memory::format_tag::nchw;
}

struct CachedWeight {
  ffi::Tensor owner;  // holds the constant alive, so its address cannot be reused by another
  memory reordered;
};

// One convolution configuration: the primitive, the reorders it needs and its scratch buffers.
struct Primitive {
  dnnl::convolution_forward conv;
  // user_*: the tensors as the caller stores them; src, weights, dst: as oneDNN chose.
  memory::desc user_src, user_residual, user_dst, plain_weights, src, weights, dst;
  dnnl::reorder src_in, dst_out, residual_in;  // only where the layouts differ
  memory src_buffer, dst_buffer;
  std::map<const void*, CachedWeight> weights_by_address;
};

std::mutex mutex;  // one model call at a time through the caches and buffers
std::map<std::vector<int64_t>, std::unique_ptr<Primitive>> primitives;
size_t weight_bytes = 0;

std::unique_ptr<Primitive> Create(const Dims& src, const Dims& weights, const Dims& dst,
                                  const ffi::ShapeView& attrs, float alpha, float beta,
                                  bool residual) {
  using tag = memory::format_tag;
  const auto f32 = memory::data_type::f32;
  auto& engine = Engine();
  int64_t groups = attrs[kGroups];
  Dims grouped = weights;
  if (groups > 1) grouped = {groups, weights[0] / groups, weights[1], weights[2], weights[3]};
  auto p = std::make_unique<Primitive>();
  p->user_src = memory::desc(src, f32, Tag(attrs[kXLayout]));
  p->user_residual = memory::desc(dst, f32, Tag(attrs[kResidualLayout]));
  p->user_dst = memory::desc(dst, f32, Tag(attrs[kOutLayout]));
  p->plain_weights = memory::desc(grouped, f32, groups > 1 ? tag::goihw : tag::oihw);
  dnnl::post_ops post_ops;
  if (residual) post_ops.append_sum(1.0f);
  switch (attrs[kActivation]) {
    case kNone: break;
    case kRelu: post_ops.append_eltwise(dnnl::algorithm::eltwise_relu, 0.0f, 0.0f); break;
    case kLeakyRelu:
      post_ops.append_eltwise(dnnl::algorithm::eltwise_relu, alpha, 0.0f);
      break;
    case kClip:
      post_ops.append_eltwise(dnnl::algorithm::eltwise_clip, alpha, beta);
      break;
    case kTanh: post_ops.append_eltwise(dnnl::algorithm::eltwise_tanh, 0.0f, 0.0f); break;
    default: TVM_FFI_THROW(ValueError) << "graphopt.onednn.conv2d: unknown activation "
                                       << attrs[kActivation];
  }
  dnnl::primitive_attr attr;
  attr.set_post_ops(post_ops);
  // oneDNN's dilation counts the gaps between taps (0 = dense); ours the tap spacing (1 = dense).
  dnnl::convolution_forward::primitive_desc pd(
      engine, dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
      memory::desc(src, f32, tag::any), memory::desc(grouped, f32, tag::any),
      memory::desc({dst[1]}, f32, tag::a), memory::desc(dst, f32, tag::any),
      {attrs[kStrideH], attrs[kStrideW]}, {attrs[kDilationH] - 1, attrs[kDilationW] - 1},
      {attrs[kPadTop], attrs[kPadLeft]}, {attrs[kPadBottom], attrs[kPadRight]}, attr);
  p->conv = dnnl::convolution_forward(pd);
  p->src = pd.src_desc();
  p->weights = pd.weights_desc();
  p->dst = pd.dst_desc();
  if (p->src != p->user_src) {
    p->src_in = dnnl::reorder(dnnl::reorder::primitive_desc(engine, p->user_src, engine, p->src));
    p->src_buffer = memory(p->src, engine);
  }
  if (p->dst != p->user_dst) {
    p->dst_out = dnnl::reorder(dnnl::reorder::primitive_desc(engine, p->dst, engine, p->user_dst));
    p->dst_buffer = memory(p->dst, engine);
  }
  if (residual && p->user_residual != p->dst) {
    p->residual_in =
        dnnl::reorder(dnnl::reorder::primitive_desc(engine, p->user_residual, engine, p->dst));
  }
  return p;
}

memory WeightsFor(Primitive& p, const ffi::Tensor& w, dnnl::stream& stream) {
  const void* address = static_cast<const char*>(w.data_ptr()) + w.byte_offset();
  auto found = p.weights_by_address.find(address);
  if (found != p.weights_by_address.end()) return found->second.reordered;
  if (weight_bytes > kWeightCacheBytes) {
    for (auto& entry : primitives) entry.second->weights_by_address.clear();
    weight_bytes = 0;
  }
  auto& engine = Engine();
  memory plain(p.plain_weights, engine, const_cast<void*>(address));
  memory reordered = plain;
  if (p.weights != p.plain_weights) {
    reordered = memory(p.weights, engine);
    dnnl::reorder(plain, reordered).execute(stream, plain, reordered);
    stream.wait();
  }
  weight_bytes += p.weights.get_size();
  p.weights_by_address[address] = CachedWeight{w, reordered};
  return reordered;
}

void Convolve(ffi::TensorView x, ffi::Tensor w, ffi::TensorView bias,
              const ffi::TensorView* residual, ffi::Shape attrs,
              ffi::TensorView activation_args, ffi::TensorView out) {
  CheckTensor(x, "input", 4);
  CheckTensor(ffi::TensorView(w), "weight", 4);
  CheckTensor(bias, "bias", 1);
  CheckTensor(out, "output", 4);
  CheckTensor(activation_args, "activation_args", 1);
  if (activation_args.size(0) != 2) {
    TVM_FFI_THROW(ValueError) << "graphopt.onednn.conv2d: expected activation_args [alpha, beta]";
  }
  float alpha = static_cast<const float*>(Data(activation_args))[0];
  float beta = static_cast<const float*>(Data(activation_args))[1];
  if (residual) CheckTensor(*residual, "residual", 4);
  if (attrs.size() != kNumAttrs) {
    TVM_FFI_THROW(ValueError) << "graphopt.onednn.conv2d: expected " << kNumAttrs
                              << " attributes, found " << attrs.size();
  }
  int threads = NumThreads();
  // OpenMP's thread count is per calling thread; oneDNN reads it when it creates and runs.
  if (omp_get_max_threads() != threads) omp_set_num_threads(threads);
  Dims src = Shape4(x, attrs[kXLayout]), weights = Shape4(ffi::TensorView(w)),
       dst = Shape4(out, attrs[kOutLayout]);
  std::vector<int64_t> key{threads, residual != nullptr};
  for (auto dims : {&src, &weights, &dst}) key.insert(key.end(), dims->begin(), dims->end());
  key.insert(key.end(), attrs.begin(), attrs.end());
  int32_t alpha_bits, beta_bits;
  std::memcpy(&alpha_bits, &alpha, 4);
  std::memcpy(&beta_bits, &beta, 4);
  key.push_back(alpha_bits);
  key.push_back(beta_bits);

  std::lock_guard<std::mutex> lock(mutex);
  try {
    auto& slot = primitives[key];
    if (!slot) slot = Create(src, weights, dst, attrs, alpha, beta, residual != nullptr);
    Primitive& p = *slot;
    auto& engine = Engine();
    dnnl::stream stream(engine);
    memory weights_memory = WeightsFor(p, w, stream);
    memory user_src(p.user_src, engine, Data(x));
    memory user_dst(p.user_dst, engine, Data(out));
    memory src_memory = user_src, dst_memory = user_dst;
    if (p.src_buffer) {
      p.src_in.execute(stream, user_src, p.src_buffer);
      src_memory = p.src_buffer;
    }
    if (p.dst_buffer) dst_memory = p.dst_buffer;
    if (residual) {  // the sum post-op adds what dst holds
      if (p.residual_in) {
        memory user_residual(p.user_residual, engine, Data(*residual));
        p.residual_in.execute(stream, user_residual, dst_memory);
      } else if (Data(*residual) != dst_memory.get_data_handle()) {
        std::memcpy(dst_memory.get_data_handle(), Data(*residual), p.dst.get_size());
      }
    }
    memory bias_memory(memory::desc({dst[1]}, memory::data_type::f32, memory::format_tag::a),
                       engine, Data(bias));
    p.conv.execute(stream, {{DNNL_ARG_SRC, src_memory},
                            {DNNL_ARG_WEIGHTS, weights_memory},
                            {DNNL_ARG_BIAS, bias_memory},
                            {DNNL_ARG_DST, dst_memory}});
    if (p.dst_buffer) p.dst_out.execute(stream, p.dst_buffer, user_dst);
    stream.wait();
  } catch (const dnnl::error& e) {
    TVM_FFI_THROW(RuntimeError) << "graphopt.onednn.conv2d: oneDNN failed (" << e.what()
                                << ") for input [" << src[0] << "," << src[1] << "," << src[2]
                                << "," << src[3] << "], weight [" << weights[0] << ","
                                << weights[1] << "," << weights[2] << "," << weights[3] << "]";
  }
}

void Conv2d(ffi::TensorView x, ffi::Tensor w, ffi::TensorView bias, ffi::Shape attrs,
            ffi::TensorView activation_args, ffi::TensorView out) {
  Convolve(x, w, bias, nullptr, attrs, activation_args, out);
}

void Conv2dResidual(ffi::TensorView x, ffi::Tensor w, ffi::TensorView bias,
                    ffi::TensorView residual, ffi::Shape attrs, ffi::TensorView activation_args,
                    ffi::TensorView out) {
  Convolve(x, w, bias, &residual, attrs, activation_args, out);
}

// Drop every cached primitive and weight (tests; frees the references to model constants).
void ClearCache() {
  std::lock_guard<std::mutex> lock(mutex);
  primitives.clear();
  weight_bytes = 0;
}

}  // namespace

TVM_FFI_STATIC_INIT_BLOCK() {
  tvm::ffi::reflection::GlobalDef()
      .def("graphopt.onednn.conv2d", Conv2d)
      .def("graphopt.onednn.conv2d_residual", Conv2dResidual)
      .def("graphopt.onednn.clear_cache", ClearCache);
}
