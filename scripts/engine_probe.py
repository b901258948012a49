#!/usr/bin/env python3
"""Liveness probe for a tritonserver that runs the llama backend without deploy_triton.py (KServe's runtime):
exits 0 while every llama model's engine serves, 1 once one reports `llama_engine_up 0` (a fatal engine error:
its requests fail until the server restarts) or when the metrics endpoint does not answer. Under
deploy_triton.py its watchdog does this itself (exit 3).

    python3 scripts/engine_probe.py [--metrics_url http://localhost:8002/metrics]
"""

import argparse
import sys
import urllib.request

from deploy_triton import engine_down


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--metrics_url", default="http://localhost:8002/metrics")
    p.add_argument("--timeout", type=float, default=4.0, help="seconds to wait for the metrics page")
    a = p.parse_args(argv)
    try:
        with urllib.request.urlopen(a.metrics_url, timeout=a.timeout) as r:
            text = r.read().decode()
    except OSError as e:
        print(f"engine_probe: {a.metrics_url}: {e}", file=sys.stderr)
        return 1
    if name := engine_down(text, None):
        print(f"engine_probe: the engine of model {name!r} has stopped (llama_engine_up 0)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
