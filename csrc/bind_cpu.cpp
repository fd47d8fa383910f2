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

// ---- metrics: label_overlaps, match_overlaps ----
namespace {

percs::LabelType label_type(const py::array& a, const std::string& name) {
  if (!(a.flags() & py::array::c_style)) throw std::invalid_argument(name + " is not C-contiguous");
  // Equivalent dtypes, not the same dtype object: '<i4' made by a reader (Zarr) is int32 too.
  if (py::isinstance<py::array_t<uint8_t>>(a)) return percs::LabelType::u8;
  if (py::isinstance<py::array_t<uint16_t>>(a)) return percs::LabelType::u16;
  if (py::isinstance<py::array_t<int32_t>>(a)) return percs::LabelType::i32;
  if (py::isinstance<py::array_t<int64_t>>(a)) return percs::LabelType::i64;
  throw std::invalid_argument(name + " has dtype " + std::string(py::str(a.dtype())) +
                              ", expected uint8, uint16, int32 or int64");
}

// An item of a list that must already be a NumPy array (a converted temporary would not outlive its view).
py::array array_item(const py::list& list, size_t b, const char* name) {
  if (!py::isinstance<py::array>(list[b]))
    throw std::invalid_argument(std::string(name) + "[" + std::to_string(b) + "] is not a NumPy array");
  return py::reinterpret_borrow<py::array>(list[b]);
}

bool same_shape(const py::array& a, const py::array& b) {
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d) {
    if (a.shape(d) != b.shape(d)) return false;
  }
  return true;
}

// Views of the image pairs; the arrays stay alive in the caller's lists.
std::vector<percs::LabelPairView> label_pair_views(const py::list& true_labels, const py::list& pred_labels) {
  if (true_labels.size() != pred_labels.size())
    throw std::invalid_argument("pred_labels has " + std::to_string(pred_labels.size()) + " images, true_labels has " +
                                std::to_string(true_labels.size()));
  std::vector<percs::LabelPairView> views;
  for (size_t b = 0; b < true_labels.size(); ++b) {
    const std::string index = "[" + std::to_string(b) + "]";
    const py::array t = array_item(true_labels, b, "true_labels"), p = array_item(pred_labels, b, "pred_labels");
    const percs::LabelType type = label_type(t, "true_labels" + index);
    if (label_type(p, "pred_labels" + index) != type)
      throw std::invalid_argument("pred_labels" + index + " and true_labels" + index + " have different dtypes");
    if (!same_shape(t, p))
      throw std::invalid_argument("pred_labels" + index + " and true_labels" + index + " have different shapes");
    if (t.size() >= (int64_t(1) << 32)) throw std::invalid_argument("true_labels" + index + " has 2^32 pixels or more");
    views.push_back({t.data(), p.data(), int64_t(t.size()), type});
  }
  return views;
}

py::array_t<int64_t> int64_array(const std::vector<int64_t>& v) { return py::array_t<int64_t>(v.size(), v.data()); }

py::dict label_overlaps(const py::list& true_labels, const py::list& pred_labels) {
  const std::vector<percs::LabelPairView> views = label_pair_views(true_labels, pred_labels);
  percs::LabelOverlaps o;
  {
    py::gil_scoped_release release;
    o = percs::cpu::label_overlaps(views);
  }
  py::dict out;
  out["true_labels"] = int64_array(o.true_labels);
  out["true_areas"] = int64_array(o.true_areas);
  out["true_offsets"] = int64_array(o.true_offsets);
  out["pred_labels"] = int64_array(o.pred_labels);
  out["pred_areas"] = int64_array(o.pred_areas);
  out["pred_offsets"] = int64_array(o.pred_offsets);
  out["pair_true"] = int64_array(o.pair_true);
  out["pair_pred"] = int64_array(o.pair_pred);
  out["pair_intersection"] = int64_array(o.pair_intersection);
  out["pair_offsets"] = int64_array(o.pair_offsets);
  return out;
}

const int64_t* vector_of(const carray<int64_t>& a, int64_t size, const char* name) {
  if (a.ndim() != 1 || a.shape(0) != size)
    throw std::invalid_argument(std::string(name) + " must have shape (" + std::to_string(size) + ",)");
  return a.data();
}

// overlaps: the label_overlaps arrays by name. Returns (matched (P, T) uint8, tp (B, T) int64, matched_iou (B, T)).
py::tuple match_overlaps(const py::dict& overlaps, carray<double> thresholds, bool strict) {
  require_ndim(thresholds, 1, "thresholds");
  auto get = [&](const char* key) { return py::cast<carray<int64_t>>(overlaps[key]); };
  const carray<int64_t> true_areas = get("true_areas"), true_offsets = get("true_offsets");
  const carray<int64_t> pred_areas = get("pred_areas"), pred_offsets = get("pred_offsets");
  const carray<int64_t> pair_true = get("pair_true"), pair_pred = get("pair_pred");
  const carray<int64_t> pair_intersection = get("pair_intersection"), pair_offsets = get("pair_offsets");
  if (true_offsets.ndim() != 1 || true_offsets.shape(0) < 1)
    throw std::invalid_argument("overlaps.true_offsets must have shape (B + 1,)");
  const int64_t B = true_offsets.shape(0) - 1, P = pair_true.shape(0), T = thresholds.shape(0);
  const percs::MatchOverlapsInput in{B, true_areas.shape(0), pred_areas.shape(0), P,
                                     vector_of(true_areas, true_areas.shape(0), "overlaps.true_areas"),
                                     vector_of(true_offsets, B + 1, "overlaps.true_offsets"),
                                     vector_of(pred_areas, pred_areas.shape(0), "overlaps.pred_areas"),
                                     vector_of(pred_offsets, B + 1, "overlaps.pred_offsets"),
                                     vector_of(pair_true, P, "overlaps.pair_true"),
                                     vector_of(pair_pred, P, "overlaps.pair_pred"),
                                     vector_of(pair_intersection, P, "overlaps.pair_intersection"),
                                     vector_of(pair_offsets, B + 1, "overlaps.pair_offsets")};
  carray<uint8_t> matched({P, T});
  std::fill(matched.mutable_data(), matched.mutable_data() + P * T, uint8_t(0));
  carray<int64_t> tp({B, T});
  carray<double> matched_iou({B, T});
  const double* th = thresholds.data();
  uint8_t* m = matched.mutable_data();
  int64_t* t = tp.mutable_data();
  double* iou = matched_iou.mutable_data();
  {
    py::gil_scoped_release release;
    percs::cpu::match_overlaps(in, th, T, strict, m, t, iou);
  }
  return py::make_tuple(matched, tp, matched_iou);
}

void bind_metrics(py::module_& m) {
  m.def("label_overlaps", &label_overlaps, py::arg("true_labels"), py::arg("pred_labels"));
  m.def("match_overlaps", &match_overlaps, py::arg("overlaps"), py::arg("thresholds"), py::arg("strict"));
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  bind_metrics(m);
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
