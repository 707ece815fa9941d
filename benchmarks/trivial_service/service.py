"""The HTTP baseline of ``benchmarks/fast_default.py``: a trivial BentoML 1.4 service.

``POST /score`` takes flowad's ``{"records": [...]}`` body, parsed by BentoML, and answers in
flowad's response shape with a constant verdict per record, so what it costs is what any
BentoML service costs: HTTP, JSON both ways, BentoML's middleware. A bare JSON array, which
flowad also accepts, is BentoML's 400 here (a plain API takes an object); the benchmark sends
the object form to both. Serve it from this folder with ``bentoml serve .``
(``bentofile.yaml``) or ``bentoml serve service:Trivial``.
"""

from __future__ import annotations

from typing import Any

import bentoml

VERDICT = {"score": 0.0, "log_likelihood": 0.0, "p_value": 1.0, "is_anomaly": False}


@bentoml.service(workers=1, traffic={"timeout": 120})
class Trivial:
    """One worker, like flowad's default (``FLOWAD_WORKERS=1``)."""

    @bentoml.api(route="/score")
    def score(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """A constant verdict per record, in flowad's response shape."""
        return {"model": "trivial:constant", "threshold": 0.0, "target_fpr": 0.01,
                "n": len(records), "results": [VERDICT] * len(records),
                "unknown_categories": {}}
