"""The web dashboard: spend, quality and runs at a glance; approvals and the kill switch from a browser.

Served by the daemon at ``/dashboard/`` (pilot/service/daemon.py mounts it when ``dashboard.enabled``) and, read
only, by ``learning-pilot dashboard`` on a store without the daemon. Pages are server-rendered HTML with SVG
charts (pilot/dashboard/charts.py); the only script is static/live.js (live updates, confirmations). Nothing is
fetched from the network. This package is imported only where the dashboard is served: ``status`` and the idle
daemon's other paths do not load it (docs/dashboard.md).
"""
