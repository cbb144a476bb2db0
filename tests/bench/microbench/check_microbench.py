#!/usr/bin/python3
"""Runs odp-microbench's FaultParallel and EvictionPolicy briefly and checks
what they report, so that the benchmarks behind docs/results/fault-parallel.md
and docs/results/eviction-policy.md keep working. No timing is checked.

usage: check_microbench.py ODP-MICROBENCH
Prints one line per failed check and exits 1 if any failed.
"""
import json
import subprocess
import sys

# Sequential cycle and hot set + scan over twice the budget: the fault counts
# are deterministic (one thread, a fixed sequence) and recorded in
# docs/results/eviction-policy.md.
EXPECTED_FAULTS = {
    "lru sequential 2x": 1024,
    "reuse-distance sequential 2x": 576,
    "lru hot+scan 2x": 256,
    "reuse-distance hot+scan 2x": 187,
}

run = subprocess.run(
    [sys.argv[1], "--benchmark_filter=FaultParallel|EvictionPolicy/[01]/[02]/2/",
     "--benchmark_min_time=0.05", "--benchmark_format=json"],
    capture_output=True, text=True, timeout=300)
if run.returncode != 0:
    sys.exit(f"odp-microbench exited {run.returncode}: {run.stderr.strip()}")
benchmarks = json.loads(run.stdout)["benchmarks"]

failures = []
for b in benchmarks:
    if b.get("error_occurred"):
        failures.append(f"{b['name']}: {b.get('error_message')}")

threads = sorted(b["threads"] for b in benchmarks if b["name"].startswith("FaultParallel/"))
if threads != [1, 2]:
    failures.append(f"FaultParallel ran with threads {threads}, expected 1 and 2")
for b in benchmarks:
    if b["name"].startswith("FaultParallel/") and not b.get("items_per_second", 0) > 0:
        failures.append(f"{b['name']}: no fault counted")

faults = {b.get("label"): b.get("chunk_faults") for b in benchmarks
          if b["name"].startswith("EvictionPolicy/")}
for label, expected in EXPECTED_FAULTS.items():
    if faults.get(label) != expected:
        failures.append(f"EvictionPolicy {label}: {faults.get(label)} chunk faults, expected {expected}")

for failure in failures:
    print(failure)
sys.exit(1 if failures else 0)
