// Sluice example router policy "lowest-latency", in JavaScript (jco + QuickJS).
//
// Picks the candidate with the lowest `latency-ms` (the connection's peak-EWMA latency); ties go
// to the lower fill ratio (active-streams / max-streams), then the lower connection id.
//
// WIT names become camelCase in JavaScript: `latency-ms` is `latencyMs`. Imported interfaces are
// ES modules named after their WIT interface, e.g.
//   import config from "sluice:policy/config@0.3.0";   // config.get("key") -> string | null

// The host guarantees max-streams >= 1; guard anyway.
const fill = (c) => c.activeStreams / Math.max(c.maxStreams, 1);

// A latency that is not a number sorts last.
const latency = (c) => (Number.isFinite(c.latencyMs) ? c.latencyMs : Infinity);

function compare(a, b) {
  return (
    latency(a) - latency(b) ||
    fill(a) - fill(b) ||
    // connection-id is a u64 given as a JS number: compare, don't subtract (may be huge).
    (a.connectionId < b.connectionId ? -1 : a.connectionId > b.connectionId ? 1 : 0)
  );
}

// `route: func(request: route-request) -> result<decision, string>`: return the decision for
// `ok`, throw a string for `err` (the host then uses its built-in router for this call).
export function route(request) {
  const candidates = request.candidates;
  if (candidates.length === 0) {
    throw "no candidates";
  }
  const order = candidates.map((_, i) => i);
  order.sort((i, j) => compare(candidates[i], candidates[j]) || i - j);

  const best = candidates[order[0]];
  const runnerUp = order.length > 1 ? candidates[order[1]] : null;
  // Sure when the winner is clearly faster (10% or more) than the next best.
  const clear = runnerUp === null || latency(best) < 0.9 * latency(runnerUp);

  return {
    choice: order[0],
    confidence: clear ? 0.9 : 0.7,
    reasoning: `js: latency ${latency(best).toFixed(1)} ms, fill ${fill(best).toFixed(2)} (conn ${best.connectionId})`,
    alternatives: order.slice(1, 4),
  };
}
