// percs._cuda: the CUDA launchers for Python. Tensors arrive as raw device pointers (tensor.data_ptr()) and the
// caller's stream as an integer (torch.cuda.current_stream().cuda_stream), so this module links neither torch
// nor pybind11 into the kernels; percs/_flows_cuda.py checks shapes, dtypes and devices before calling.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <tuple>

#include "cuda_ops.h"

namespace py = pybind11;

namespace {

template <typename T>
T* device(std::uintptr_t pointer) {
  return reinterpret_cast<T*>(pointer);
}

void* stream_of(std::uintptr_t stream) { return reinterpret_cast<void*>(stream); }

percs::cuda::DeviceCells cells_of(std::uintptr_t boxes, std::uintptr_t scratch_offsets, int64_t n_cells) {
  return {device<const int32_t>(boxes), device<const int64_t>(scratch_offsets), n_cells};
}

void masks_to_flows(std::uintptr_t labels, int64_t H, int64_t W, std::uintptr_t boxes, std::uintptr_t offsets,
                    int64_t n_cells, std::uintptr_t scratch, std::uintptr_t flows, std::uintptr_t stream) {
  percs::cuda::masks_to_flows(device<const int32_t>(labels), H, W, cells_of(boxes, offsets, n_cells),
                              device<double>(scratch), device<float>(flows), stream_of(stream));
}

void flow_error(std::uintptr_t labels, std::uintptr_t unit_flows, int64_t H, int64_t W, std::uintptr_t boxes,
                std::uintptr_t offsets, int64_t n_cells, std::uintptr_t scratch, std::uintptr_t errors,
                std::uintptr_t stream) {
  percs::cuda::flow_error(device<const int32_t>(labels), device<const float>(unit_flows), H, W,
                          cells_of(boxes, offsets, n_cells), device<double>(scratch), device<double>(errors),
                          stream_of(stream));
}

void follow_flows(std::uintptr_t yx_flows, int64_t H, int64_t W, std::uintptr_t points, int64_t n_points,
                  int32_t niter, std::uintptr_t stream) {
  percs::cuda::follow_flows(device<const float>(yx_flows), H, W, device<float>(points), n_points, niter,
                            stream_of(stream));
}

void histogram_endpoints(std::uintptr_t endpoints, int64_t n_points, int64_t H, int64_t W, std::uintptr_t end_index,
                         std::uintptr_t hist, std::uintptr_t stream) {
  percs::cuda::histogram_endpoints(device<const float>(endpoints), n_points, H, W, device<int64_t>(end_index),
                                   device<int32_t>(hist), stream_of(stream));
}

void seed_flags(std::uintptr_t hist, int64_t H, int64_t W, int32_t seed_min_count, std::uintptr_t flags,
                std::uintptr_t stream) {
  percs::cuda::seed_flags(device<const int32_t>(hist), H, W, seed_min_count, device<uint8_t>(flags),
                          stream_of(stream));
}

void paint_seeds(std::uintptr_t hist, int64_t H, int64_t W, std::uintptr_t seeds, int64_t n_seeds,
                 int32_t grow_min_count, std::uintptr_t painted, std::uintptr_t stream) {
  percs::cuda::paint_seeds(device<const int32_t>(hist), H, W, device<const int64_t>(seeds), n_seeds, grow_min_count,
                           device<int32_t>(painted), stream_of(stream));
}

void assign_labels(std::uintptr_t pixel_index, std::uintptr_t end_index, int64_t n_points, std::uintptr_t painted,
                   std::uintptr_t labels, std::uintptr_t stream) {
  percs::cuda::assign_labels(device<const int64_t>(pixel_index), device<const int64_t>(end_index), n_points,
                             device<const int32_t>(painted), device<int32_t>(labels), stream_of(stream));
}

void fill_holes(std::uintptr_t labels, int64_t H, int64_t W, std::uintptr_t boxes, std::uintptr_t offsets,
                int64_t n_cells, std::uintptr_t scratch, std::uintptr_t hole_keys, std::uintptr_t stream) {
  percs::cuda::fill_holes(device<int32_t>(labels), H, W, cells_of(boxes, offsets, n_cells), device<uint8_t>(scratch),
                          device<uint64_t>(hole_keys), stream_of(stream));
}

}  // namespace

// ---- metrics: label_overlaps ----
namespace {

// table: (keys pointer, counts pointer, capacity), see percs::cuda::PairTables.
using TableArg = std::tuple<std::uintptr_t, std::uintptr_t, int64_t>;

percs::cuda::PairTables tables_of(const TableArg& table) {
  return {device<uint64_t>(std::get<0>(table)), device<uint64_t>(std::get<1>(table)), std::get<2>(table)};
}

void label_overlaps_count(std::uintptr_t true_labels, std::uintptr_t pred_labels, int64_t B, int64_t n_pixels,
                          const TableArg& table, std::uintptr_t n_keys, std::uintptr_t negative,
                          std::uintptr_t stream) {
  percs::cuda::label_overlaps_count(device<const int32_t>(true_labels), device<const int32_t>(pred_labels), B,
                                    n_pixels, tables_of(table), device<uint64_t>(n_keys), device<int32_t>(negative),
                                    stream_of(stream));
}

void label_overlaps_compact(const TableArg& table, int64_t B, int64_t n_keys, std::uintptr_t rows,
                            std::uintptr_t cursor, std::uintptr_t stream) {
  percs::cuda::label_overlaps_compact(tables_of(table), B, n_keys, device<int64_t>(rows), device<uint64_t>(cursor),
                                      stream_of(stream));
}

void bind_metrics(py::module_& m) {
  using release = py::call_guard<py::gil_scoped_release>;
  m.def("label_overlaps_count", &label_overlaps_count, release(), py::arg("true_labels"), py::arg("pred_labels"),
        py::arg("B"), py::arg("n_pixels"), py::arg("table"), py::arg("n_keys"), py::arg("negative"),
        py::arg("stream"));
  m.def("label_overlaps_compact", &label_overlaps_compact, release(), py::arg("table"), py::arg("B"),
        py::arg("n_keys"), py::arg("rows"), py::arg("cursor"), py::arg("stream"));
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  bind_metrics(m);
  m.doc() = "percs CUDA kernels: launchers over raw device pointers on the caller's stream (see csrc/cuda_ops.h)";
  // Launches are asynchronous and quick; the GIL is released in case the launch queue is full.
  using release = py::call_guard<py::gil_scoped_release>;
  m.def("device_count", &percs::cuda::device_count, "Number of CUDA devices; 0 without a device or driver");
  m.def("masks_to_flows", &masks_to_flows, release(), py::arg("labels"), py::arg("H"), py::arg("W"),
        py::arg("boxes"), py::arg("scratch_offsets"), py::arg("n_cells"), py::arg("scratch"), py::arg("flows"),
        py::arg("stream"));
  m.def("flow_error", &flow_error, release(), py::arg("labels"), py::arg("unit_flows"), py::arg("H"), py::arg("W"),
        py::arg("boxes"), py::arg("scratch_offsets"), py::arg("n_cells"), py::arg("scratch"), py::arg("errors"),
        py::arg("stream"));
  m.def("follow_flows", &follow_flows, release(), py::arg("yx_flows"), py::arg("H"), py::arg("W"),
        py::arg("points"), py::arg("n_points"), py::arg("niter"), py::arg("stream"));
  m.def("histogram_endpoints", &histogram_endpoints, release(), py::arg("endpoints"), py::arg("n_points"),
        py::arg("H"), py::arg("W"), py::arg("end_index"), py::arg("hist"), py::arg("stream"));
  m.def("seed_flags", &seed_flags, release(), py::arg("hist"), py::arg("H"), py::arg("W"),
        py::arg("seed_min_count"), py::arg("flags"), py::arg("stream"));
  m.def("paint_seeds", &paint_seeds, release(), py::arg("hist"), py::arg("H"), py::arg("W"), py::arg("seeds"),
        py::arg("n_seeds"), py::arg("grow_min_count"), py::arg("painted"), py::arg("stream"));
  m.def("assign_labels", &assign_labels, release(), py::arg("pixel_index"), py::arg("end_index"),
        py::arg("n_points"), py::arg("painted"), py::arg("labels"), py::arg("stream"));
  m.def("fill_holes", &fill_holes, release(), py::arg("labels"), py::arg("H"), py::arg("W"), py::arg("boxes"),
        py::arg("scratch_offsets"), py::arg("n_cells"), py::arg("scratch"), py::arg("hole_keys"), py::arg("stream"));
}
