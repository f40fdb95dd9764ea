// Sluice example router policy "pack", in C (bindings from wit-bindgen, compiled by zig cc).
//
// Bin-packing: use as few connections as possible so that idle ones can be drained. Among the
// candidates below 80% fill, choose the most loaded one (highest active-streams), ties by lower
// connection id. When every candidate is at 80% or more, choose the least loaded one (lowest
// fill ratio active-streams / max-streams), ties by lower connection id.
//
// The bindings (`router.h`, `router.c`) are generated at build time from ../../../wit by
// `cargo xtask plugins` into the target folder; see README.md.

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "router.h"

typedef sluice_policy_types_candidate_t candidate_t;

// Below 80% fill: active / max < 4 / 5, in integers (max-streams is at least 1).
static bool below_threshold(const candidate_t *c) {
  return (uint64_t)c->active_streams * 5 < (uint64_t)c->max_streams * 4;
}

static double fill(const candidate_t *c) {
  return c->max_streams ? (double)c->active_streams / c->max_streams : 1.0;
}

// qsort has no context argument: the candidates being sorted.
static const candidate_t *sorting;

// Best first: candidates below the threshold (most loaded first), then the others (least
// filled first); ties by lower connection id.
static int compare(const void *pa, const void *pb) {
  const candidate_t *a = &sorting[*(const uint32_t *)pa];
  const candidate_t *b = &sorting[*(const uint32_t *)pb];
  bool a_below = below_threshold(a), b_below = below_threshold(b);
  if (a_below != b_below) return a_below ? -1 : 1;
  if (a_below) {
    if (a->active_streams != b->active_streams)
      return a->active_streams > b->active_streams ? -1 : 1;
  } else {
    // a.active / a.max < b.active / b.max, exactly.
    uint64_t left = (uint64_t)a->active_streams * b->max_streams;
    uint64_t right = (uint64_t)b->active_streams * a->max_streams;
    if (left != right) return left < right ? -1 : 1;
  }
  if (a->connection_id != b->connection_id) return a->connection_id < b->connection_id ? -1 : 1;
  return 0;
}

// The export. Ownership rules of the generated bindings:
// - `request` belongs to this function: free it before returning
//   (router_route_request_free).
// - `ret` (on success) and `err` (on failure) are freed by the bindings after the host has read
//   them, so they must point to malloc'ed memory: use router_string_dup, not router_string_set.
bool exports_router_route(router_route_request_t *request, router_decision_t *ret,
                          router_string_t *err) {
  size_t n = request->candidates.len;
  if (n == 0) {
    router_route_request_free(request);
    router_string_dup(err, "c: no candidates");
    return false;
  }

  uint32_t order[256];
  if (n > sizeof order / sizeof order[0]) n = sizeof order / sizeof order[0];
  for (size_t i = 0; i < n; i++) order[i] = (uint32_t)i;
  sorting = request->candidates.ptr;
  qsort(order, n, sizeof order[0], compare);

  const candidate_t *best = &request->candidates.ptr[order[0]];
  bool packed = below_threshold(best);

  char text[160];
  snprintf(text, sizeof text, "c: %s conn %llu, %u/%u streams (fill %.2f)",
           packed ? "pack onto" : "all >= 80% full, least loaded", (unsigned long long)best->connection_id,
           best->active_streams, best->max_streams, fill(best));

  ret->choice = order[0];
  ret->confidence = packed ? 0.9f : 0.5f;
  router_string_dup(&ret->reasoning, text);
  size_t alternatives = n - 1 < 3 ? n - 1 : 3;
  ret->alternatives.len = alternatives;
  ret->alternatives.ptr = NULL;
  if (alternatives > 0) {
    ret->alternatives.ptr = malloc(alternatives * sizeof(uint32_t));
    memcpy(ret->alternatives.ptr, &order[1], alternatives * sizeof(uint32_t));
  }

  router_route_request_free(request);
  return true;
}
