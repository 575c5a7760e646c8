"""The vendor sandbox: a real HTTP server on 127.0.0.1 that speaks the vendor APIs closely enough
for the product's tests, demo, benchmark and users' staging, records every request, and plays
scripted faults (429 + Retry-After, 5xx, timeouts, vendor error bodies)."""

from worker.sandbox.server import Recorded, Reply, Sandbox

__all__ = ["Recorded", "Reply", "Sandbox"]
