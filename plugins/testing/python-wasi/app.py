"""Test plugin for the host's tests: a Python router that uses WASI the way careless policies do.

Config `mode` (from `[plugins.router.config]`):
- `print` (default): prints a line to stdout (discarded by the host), then picks candidate 0;
- `sleep`: calls time.sleep(3600), which waits through wasi:io/poll - the host must refuse that
  at once (a trap), never wait.
"""

import time

import wit_world
from componentize_py_types import Err
from wit_world.imports import config, types


class WitWorld(wit_world.WitWorld):
    def route(self, request: types.RouteRequest) -> types.Decision:
        if config.get("mode") == "sleep":
            time.sleep(3600)
            raise Err("woke up")
        print(f"routing {len(request.candidates)} candidates", flush=True)
        return types.Decision(
            choice=0, confidence=1.0, reasoning="python-wasi: printed", alternatives=[]
        )
