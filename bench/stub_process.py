"""Starting the FHIR stub (bench/fhir_stub.py) in its own process, for `make bench` and `make soak`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from cds_service.resource_types import BY_PREFETCH_KEY

HERE = Path(__file__).resolve().parent


def start_fhir_stub(prefetch: dict[str, Any], delay_ms: int, work: Path) -> tuple[subprocess.Popen[str], str]:
    """The stub answering each resource type's searches with that prefetch key's value, and its base URL.
    Its own process, so that it does not share the measured process's GIL."""
    bodies = work / "stub-bodies.json"
    bodies.write_text(json.dumps({BY_PREFETCH_KEY[key].name: value for key, value in prefetch.items()}))
    stub = subprocess.Popen(
        [sys.executable, str(HERE / "fhir_stub.py"), str(delay_ms), str(bodies)], stdout=subprocess.PIPE, text=True
    )
    assert stub.stdout is not None
    return stub, f"http://127.0.0.1:{int(stub.stdout.readline())}/fhir"
