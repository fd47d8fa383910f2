// match_overlaps on the CPU: images in parallel (OpenMP); per image and threshold, isolated edges are matched
// directly and larger connected components by successive shortest augmenting paths (see match_overlaps.h).
#include <algorithm>
#include <limits>
#include <numeric>
#include <queue>
#include <stdexcept>
#include <string>

#include "cpu_ops.h"
#include "match_overlaps/match_overlaps.h"

namespace percs::cpu {
namespace {

constexpr double INF = std::numeric_limits<double>::infinity();

// An edge of the threshold graph: true instance u, pred instance v (local to their image or component).
struct Edge {
  int32_t u, v;
  double iou;
  int64_t pair;  // index into the pair arrays
};

// Maximum-weight matching of one connected component, weights 1 + iou / (2 M): successive shortest augmenting
// paths, Dijkstra on reduced costs (potentials keep them >= 0). Each augmentation adds one matched edge.
class AugmentingPaths {
 public:
  // edges: sorted by u, u in [0, nu), v in [0, nv). On return mate_u[u] is u's matched edge or -1.
  const std::vector<int32_t>& solve(const std::vector<Edge>& edges, int32_t nu, int32_t nv) {
    edges_ = &edges;
    nu_ = nu;
    nv_ = nv;
    first_.assign(nu + 1, 0);
    for (const Edge& e : edges) first_[e.u + 1] += 1;
    std::partial_sum(first_.begin(), first_.end(), first_.begin());
    const double scale = 0.5 / double(std::min(nu, nv));
    weight_.resize(edges.size());
    pot_u_.assign(nu, 0.0);
    pot_v_.assign(nv, INF);
    for (size_t e = 0; e < edges.size(); ++e) {
      weight_[e] = 1.0 + edges[e].iou * scale;
      pot_v_[edges[e].v] = std::min(pot_v_[edges[e].v], -weight_[e]);
    }
    mate_u_.assign(nu, -1);
    mate_v_.assign(nv, -1);
    while (augment()) {
    }
    return mate_u_;
  }

 private:
  using Entry = std::pair<double, int32_t>;  // (reduced distance, node: u, or nu + v)

  bool relax(std::vector<double>& dist, int32_t node, double d, int32_t heap_node) {
    if (d >= dist[node]) return false;
    dist[node] = d;
    heap_.push({d, heap_node});
    return true;
  }

  // Reduced costs are >= 0 in exact arithmetic; rounding can leave -1 ulp, clamped so Dijkstra stays monotone.
  void dijkstra() {
    const std::vector<Edge>& edges = *edges_;
    dist_u_.assign(nu_, INF);
    dist_v_.assign(nv_, INF);
    done_u_.assign(nu_, 0);
    done_v_.assign(nv_, 0);
    via_v_.assign(nv_, -1);
    for (int32_t u = 0; u < nu_; ++u) {
      if (mate_u_[u] < 0) relax(dist_u_, u, 0.0, u);
    }
    while (!heap_.empty()) {
      const auto [d, node] = heap_.top();
      heap_.pop();
      if (node < nu_) {
        const int32_t u = node;
        if (done_u_[u] || d > dist_u_[u]) continue;
        done_u_[u] = 1;
        for (int32_t e = first_[u]; e < first_[u + 1]; ++e) {
          if (e == mate_u_[u]) continue;
          const int32_t v = edges[e].v;
          const double dv = d + std::max(0.0, pot_u_[u] - pot_v_[v] - weight_[e]);
          if (relax(dist_v_, v, dv, nu_ + v)) via_v_[v] = e;
        }
      } else {
        const int32_t v = node - nu_;
        if (done_v_[v] || d > dist_v_[v]) continue;
        done_v_[v] = 1;
        const int32_t e = mate_v_[v];
        if (e >= 0) relax(dist_u_, edges[e].u, d + std::max(0.0, weight_[e] + pot_v_[v] - pot_u_[edges[e].u]), edges[e].u);
      }
    }
  }

  // Augments along the cheapest path from a free true to a free pred instance; false when there is none.
  bool augment() {
    dijkstra();
    int32_t best = -1;
    double best_cost = INF;
    for (int32_t v = 0; v < nv_; ++v) {
      // Free true instances keep potential 0, so dist + potential is the path's true cost.
      if (done_v_[v] && mate_v_[v] < 0 && dist_v_[v] + pot_v_[v] < best_cost) {
        best = v;
        best_cost = dist_v_[v] + pot_v_[v];
      }
    }
    if (best < 0) return false;
    for (int32_t u = 0; u < nu_; ++u) pot_u_[u] += done_u_[u] ? dist_u_[u] : 0.0;
    for (int32_t v = 0; v < nv_; ++v) pot_v_[v] += done_v_[v] ? dist_v_[v] : 0.0;
    for (int32_t v = best;;) {
      const int32_t e = via_v_[v];
      const int32_t u = (*edges_)[e].u;
      const int32_t previous = mate_u_[u];
      mate_u_[u] = e;
      mate_v_[v] = e;
      if (previous < 0) return true;
      v = (*edges_)[previous].v;
    }
  }

  const std::vector<Edge>* edges_ = nullptr;
  int32_t nu_ = 0, nv_ = 0;
  std::vector<int32_t> first_, mate_u_, mate_v_, via_v_;
  std::vector<double> weight_, pot_u_, pot_v_, dist_u_, dist_v_;
  std::vector<uint8_t> done_u_, done_v_;
  std::priority_queue<Entry, std::vector<Entry>, std::greater<Entry>> heap_;
};

// Per-thread buffers for one image: instances are local, true 0..nt-1 and pred nt..nt+np-1 in the union-find.
struct Workspace {
  std::vector<double> iou;
  std::vector<int32_t> degree, parent, local;
  std::vector<Edge> edges, component;
  std::vector<std::pair<int32_t, int32_t>> by_root;  // (component root, index into edges)
  AugmentingPaths solver;

  int32_t find(int32_t x) {
    while (parent[x] != x) x = parent[x] = parent[parent[x]];
    return x;
  }
};

struct Totals {
  int64_t tp = 0;
  double iou = 0.0;
  void add(const Edge& e, uint8_t* matched, int64_t T) {
    matched[e.pair * T] = 1;
    tp += 1;
    iou += e.iou;
  }
};

// Solves the component of edges[by_root[begin..end)] and adds its matched edges to totals.
void solve_component(Workspace& ws, int32_t nt, size_t begin, size_t end, uint8_t* matched, int64_t T, Totals& totals) {
  ws.component.clear();
  int32_t nu = 0, nv = 0;
  for (size_t k = begin; k < end; ++k) {
    const Edge& e = ws.edges[ws.by_root[k].second];
    if (ws.local[e.u] < 0) ws.local[e.u] = nu++;
    if (ws.local[nt + e.v] < 0) ws.local[nt + e.v] = nv++;
    ws.component.push_back({ws.local[e.u], ws.local[nt + e.v], e.iou, e.pair});
  }
  std::sort(ws.component.begin(), ws.component.end(), [](const Edge& a, const Edge& b) { return a.u < b.u; });
  const std::vector<int32_t>& mate = ws.solver.solve(ws.component, nu, nv);
  for (int32_t e : mate) {
    if (e >= 0) totals.add(ws.component[e], matched, T);
  }
  for (size_t k = begin; k < end; ++k) {
    const Edge& e = ws.edges[ws.by_root[k].second];
    ws.local[e.u] = ws.local[nt + e.v] = -1;
  }
}

// One image at one threshold: matched flags go to matched[pair * T] (the threshold's column).
Totals match_image(Workspace& ws, const int64_t* pair_true, const int64_t* pair_pred, int64_t n_pairs, int32_t nt,
                   int32_t np, double threshold, bool strict, uint8_t* matched, int64_t T) {
  ws.edges.clear();
  ws.degree.assign(nt + np, 0);
  for (int64_t q = 0; q < n_pairs; ++q) {
    if (!iou_passes(ws.iou[q], threshold, strict)) continue;
    const int32_t u = int32_t(pair_true[q]), v = int32_t(pair_pred[q]);
    ws.edges.push_back({u, v, ws.iou[q], q});
    ws.degree[u] += 1;
    ws.degree[nt + v] += 1;
  }
  Totals totals;
  ws.parent.resize(nt + np);
  std::iota(ws.parent.begin(), ws.parent.end(), 0);
  ws.by_root.clear();
  for (size_t k = 0; k < ws.edges.size(); ++k) {
    const Edge& e = ws.edges[k];
    if (ws.degree[e.u] == 1 && ws.degree[nt + e.v] == 1) {
      totals.add(e, matched, T);
    } else {
      ws.parent[ws.find(e.u)] = ws.find(nt + e.v);
      ws.by_root.push_back({-1, int32_t(k)});
    }
  }
  for (auto& [root, k] : ws.by_root) root = ws.find(ws.edges[k].u);
  std::sort(ws.by_root.begin(), ws.by_root.end());
  ws.local.assign(nt + np, -1);
  for (size_t begin = 0, end = 0; begin < ws.by_root.size(); begin = end) {
    while (end < ws.by_root.size() && ws.by_root[end].first == ws.by_root[begin].first) ++end;
    solve_component(ws, nt, begin, end, matched, T, totals);
  }
  return totals;
}

void check_offsets(const int64_t* offsets, int64_t n_images, int64_t n, const char* name) {
  if (offsets[0] != 0 || offsets[n_images] != n)
    throw std::invalid_argument(std::string(name) + " must start at 0 and end at " + std::to_string(n));
  for (int64_t b = 0; b < n_images; ++b) {
    if (offsets[b + 1] < offsets[b]) throw std::invalid_argument(std::string(name) + " is not non-decreasing");
  }
}

// The pairs of every image index that image's instances, and intersections fit the areas.
void check_input(const MatchOverlapsInput& in) {
  check_offsets(in.true_offsets, in.n_images, in.n_true, "overlaps.true_offsets");
  check_offsets(in.pred_offsets, in.n_images, in.n_pred, "overlaps.pred_offsets");
  check_offsets(in.pair_offsets, in.n_images, in.n_pairs, "overlaps.pair_offsets");
  for (int64_t b = 0; b < in.n_images; ++b) {
    for (int64_t q = in.pair_offsets[b]; q < in.pair_offsets[b + 1]; ++q) {
      const int64_t t = in.pair_true[q], p = in.pair_pred[q];
      if (t < in.true_offsets[b] || t >= in.true_offsets[b + 1])
        throw std::invalid_argument("overlaps.pair_true[" + std::to_string(q) + "] is not a true instance of its image");
      if (p < in.pred_offsets[b] || p >= in.pred_offsets[b + 1])
        throw std::invalid_argument("overlaps.pair_pred[" + std::to_string(q) + "] is not a pred instance of its image");
      const int64_t i = in.pair_intersection[q];
      if (i < 1 || i > in.true_areas[t] || i > in.pred_areas[p])
        throw std::invalid_argument("overlaps.pair_intersection[" + std::to_string(q) + "] is not in [1, min(areas)]");
    }
  }
}

}  // namespace

void match_overlaps(const MatchOverlapsInput& in, const double* thresholds, int64_t T, bool strict, uint8_t* matched,
                    int64_t* tp, double* matched_iou) {
  check_input(in);
#pragma omp parallel
  {
    Workspace ws;
#pragma omp for schedule(dynamic, 4)
    for (int64_t b = 0; b < in.n_images; ++b) {
      const int64_t q0 = in.pair_offsets[b], n_pairs = in.pair_offsets[b + 1] - q0;
      const int64_t t0 = in.true_offsets[b], p0 = in.pred_offsets[b];
      const int32_t nt = int32_t(in.true_offsets[b + 1] - t0), np = int32_t(in.pred_offsets[b + 1] - p0);
      std::vector<int64_t> local_true(n_pairs), local_pred(n_pairs);
      ws.iou.resize(n_pairs);
      for (int64_t q = 0; q < n_pairs; ++q) {
        local_true[q] = in.pair_true[q0 + q] - t0;
        local_pred[q] = in.pair_pred[q0 + q] - p0;
        ws.iou[q] = pair_iou(in.pair_intersection[q0 + q], in.true_areas[in.pair_true[q0 + q]],
                             in.pred_areas[in.pair_pred[q0 + q]]);
      }
      for (int64_t k = 0; k < T; ++k) {
        const Totals totals = match_image(ws, local_true.data(), local_pred.data(), n_pairs, nt, np, thresholds[k],
                                          strict, matched + q0 * T + k, T);
        tp[b * T + k] = totals.tp;
        matched_iou[b * T + k] = totals.iou;
      }
    }
  }
}

}  // namespace percs::cpu
