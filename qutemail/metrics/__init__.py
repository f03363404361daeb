"""
Metrics and health: what the server counts (L{qutemail.metrics.registry}),
served to Prometheus with C{/healthz} beside it (L{qutemail.metrics.http}).
"""
