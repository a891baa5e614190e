#!/usr/bin/env python3
"""What a change saved: the W1 (or W2) body handled in process by two trees, in alternating rounds.

    .venv/bin/python bench/ab.py BASE_REV [--body w1|w2] [--rounds 9] [--calls 300]

BASE_REV is checked out into a temporary git worktree. One process per tree loads the app once;
rounds then alternate between them (base, this tree, base, ...) so that drift in a shared machine's
speed affects both alike. Prints each tree's median ms per call and the saving.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import gc, os, sys, tempfile, time
sys.path.insert(0, os.path.join(os.getcwd(), "bench"))
import orjson, records
from cds_service import create_app
db = os.path.join(tempfile.mkdtemp(), "ab.sqlite3")
client = create_app({"database_url": f"sqlite:///{db}", "auth": "off"}).test_client()
body = orjson.dumps(records.record(*SIZE))
path = "/cds-services/lumbar-mri-order-select"
for _ in range(100):
    assert client.post(path, data=body, content_type="application/json").status_code == 200
gc.collect(); gc.freeze(); gc.set_threshold(50_000, 20, 100)
print("ready", flush=True)
for line in sys.stdin:
    calls = int(line)
    started = time.perf_counter()
    for _ in range(calls):
        client.post(path, data=body, content_type="application/json")
    print((time.perf_counter() - started) / calls * 1000, flush=True)
"""


SIZES = {"w1": (60, 20, 30), "w2": (650, 190, 300)}  # the W1 and W2 records of make bench


def start(tree: Path, body: str) -> subprocess.Popen:
    env = {"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin", "CDS_AUTH": "off"}
    child = subprocess.Popen([sys.executable, "-c", f"SIZE = {SIZES[body]}\n" + CHILD], cwd=tree, env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)  # fmt: skip
    assert child.stdout is not None and child.stdout.readline().strip() == "ready", f"{tree} did not start"
    return child


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("--body", choices=sorted(SIZES), default="w1")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        base_tree = Path(directory) / "base"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(base_tree), args.base], cwd=ROOT, check=True)
        try:
            children = {"base": start(base_tree, args.body), "this": start(ROOT, args.body)}
            times: dict[str, list[float]] = {"base": [], "this": []}
            for _ in range(args.rounds):
                for name, child in children.items():
                    assert child.stdin is not None and child.stdout is not None
                    child.stdin.write(f"{args.calls}\n")
                    child.stdin.flush()
                    times[name].append(float(child.stdout.readline()))
            for child in children.values():
                child.kill()
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
    base, this = statistics.median(times["base"]), statistics.median(times["this"])
    print(f"base {args.base}: {base:.3f} ms/call (rounds {min(times['base']):.3f}-{max(times['base']):.3f})")
    print(f"this tree: {this:.3f} ms/call (rounds {min(times['this']):.3f}-{max(times['this']):.3f})")
    print(f"saved {base - this:.3f} ms/call ({(base - this) / base:.0%})")


if __name__ == "__main__":
    main()
