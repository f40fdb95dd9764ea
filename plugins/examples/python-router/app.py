"""Sluice example router policy "region-affinity", in Python (componentize-py).

Prefers candidates in the region named by the plugin config key `region`; among them (or among
all candidates when none matches or the key is unset) picks the lowest fill ratio
(active-streams / max-streams), ties by lower priority, then lower connection id.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, types


def fill(c: types.Candidate) -> float:
    # The host guarantees max-streams >= 1; guard anyway.
    return c.active_streams / max(c.max_streams, 1)


class WitWorld(wit_world.WitWorld):
    def route(self, request: types.RouteRequest) -> types.Decision:
        candidates = request.candidates
        if not candidates:
            # Raising Err makes the host fall back to its built-in router for this call.
            raise Err("no candidates")

        # Endpoints are listed once; a candidate names its endpoint by index.
        endpoints = request.endpoints
        region = config.get("region")
        matched = region is not None and any(endpoints[c.endpoint].region == region for c in candidates)

        def key(i: int):
            c = candidates[i]
            endpoint = endpoints[c.endpoint]
            # Same-region first (only when some candidate matches), then least filled.
            other_region = matched and endpoint.region != region
            return (other_region, fill(c), endpoint.priority, c.connection_id)

        order = sorted(range(len(candidates)), key=key)
        best = candidates[order[0]]

        if matched:
            where = f"region {region}"
        elif region is None:
            where = "region unset"
        else:
            where = f"no candidate in region {region}"
        reasoning = f"python: {where}, fill {fill(best):.2f} (conn {best.connection_id})"

        return types.Decision(
            choice=order[0],
            confidence=1.0 if matched else 0.6,
            reasoning=reasoning,
            alternatives=order[1:4],
        )
