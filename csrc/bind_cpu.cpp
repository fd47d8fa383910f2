// percs._cpu: NumPy views in, GIL released while the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>
#include <string>

#include "cpu_ops.h"

namespace py = pybind11;


namespace {

template <typename T>
using carray = py::array_t<T, py::array::c_style>;

void require_ndim(const py::array& a, int ndim, const char* name) {
  if (a.ndim() != ndim)
    throw std::invalid_argument(std::string(name) + " has " + std::to_string(a.ndim()) + " dims, expected " +
                                std::to_string(ndim));
}

carray<float> masks_to_flows(carray<int32_t> labels) {
  require_ndim(labels, 3, "labels");
  const int64_t B = labels.shape(0), H = labels.shape(1), W = labels.shape(2);
  carray<float> flows({B, int64_t(2), H, W});
  const int32_t* in = labels.data();
  float* out = flows.mutable_data();
  {
    py::gil_scoped_release release;
    percs::cpu::masks_to_flows(in, B, H, W, out);
  }
  return flows;
}

carray<float> follow_flows(carray<float> flows, carray<float> points, int32_t niter) {
  require_ndim(flows, 3, "flows");
  require_ndim(points, 2, "points");
  if (flows.shape(2) != 2) throw std::invalid_argument("flows must have shape (H, W, 2)");
  if (points.shape(1) != 2) throw std::invalid_argument("points must have shape (N, 2)");
  if (niter < 0) throw std::invalid_argument("niter must be >= 0");
  const int64_t H = flows.shape(0), W = flows.shape(1), n = points.shape(0);
  if (n > 0 && (H == 0 || W == 0)) throw std::invalid_argument("flows is empty but points is not");
  carray<float> result({n, int64_t(2)});
  std::copy(points.data(), points.data() + 2 * n, result.mutable_data());
  const float* f = flows.data();
  float* p = result.mutable_data();
  {
    py::gil_scoped_release release;
    percs::cpu::follow_flows(f, H, W, p, n, niter);
  }
  return result;
}

carray<int32_t> get_masks(carray<float> endpoints, carray<int64_t> pixel_index, int64_t H, int64_t W,
                          int32_t seed_min_count, int32_t grow_min_count, double max_size_fraction) {
  require_ndim(endpoints, 2, "endpoints");
  require_ndim(pixel_index, 1, "pixel_index");
  const int64_t n = endpoints.shape(0);
  if (endpoints.shape(1) != 2) throw std::invalid_argument("endpoints must have shape (N, 2)");
  if (pixel_index.shape(0) != n) throw std::invalid_argument("pixel_index must have one entry per end point");
  if (H < 0 || W < 0) throw std::invalid_argument("shape must be non-negative");
  carray<int32_t> labels({H, W});
  const float* e = endpoints.data();
  const int64_t* idx = pixel_index.data();
  int32_t* out = labels.mutable_data();
  {
    py::gil_scoped_release release;
    percs::cpu::get_masks(e, idx, n, H, W, seed_min_count, grow_min_count, max_size_fraction, out);
  }
  return labels;
}

py::array_t<double> flow_error(carray<int32_t> labels, carray<float> flows, int64_t n_labels) {
  require_ndim(labels, 2, "labels");
  require_ndim(flows, 3, "flows");
  const int64_t H = labels.shape(0), W = labels.shape(1);
  if (flows.shape(0) != 2 || flows.shape(1) != H || flows.shape(2) != W)
    throw std::invalid_argument("flows must have shape (2, H, W) matching labels");
  py::array_t<double> errors(n_labels);
  const int32_t* l = labels.data();
  const float* f = flows.data();
  double* out = errors.mutable_data();
  {
    py::gil_scoped_release release;
    percs::cpu::flow_error(l, f, H, W, out, n_labels);
  }
  return errors;
}

carray<int32_t> fill_holes(carray<int32_t> labels) {
  require_ndim(labels, 2, "labels");
  const int64_t H = labels.shape(0), W = labels.shape(1);
  carray<int32_t> result({H, W});
  std::copy(labels.data(), labels.data() + H * W, result.mutable_data());
  int32_t* out = result.mutable_data();
  {
    py::gil_scoped_release release;
    percs::cpu::fill_holes(out, H, W);
  }
  return result;
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "percs CPU kernels (C++, OpenMP)";
  m.def("masks_to_flows", &masks_to_flows, py::arg("labels"));
  m.def("follow_flows", &follow_flows, py::arg("flows"), py::arg("points"), py::arg("niter"));
  m.def("get_masks", &get_masks, py::arg("endpoints"), py::arg("pixel_index"), py::arg("H"), py::arg("W"),
        py::arg("seed_min_count"), py::arg("grow_min_count"), py::arg("max_size_fraction"));
  m.def("flow_error", &flow_error, py::arg("labels"), py::arg("flows"), py::arg("n_labels"));
  m.def("fill_holes", &fill_holes, py::arg("labels"));
  m.def("max_threads", &percs::cpu::max_threads);
#ifdef PERCS_HAVE_OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
