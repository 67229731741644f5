"""One router per resource: metrics, custom metrics, realtime, jobs, operations, dashboard."""
