"""The flowad HTTP service (BentoML), its Prometheus metrics, drift statistics and dashboards."""
