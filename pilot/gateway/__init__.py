"""The capture gateway: an OpenAI-compatible proxy in front of the serving stack (``learning-pilot gateway``).

A product changes its OpenAI base URL to the gateway's; from then on every call is routed to the adapter that
serves its session (champion or canary, pilot/gateway/routing.py), recorded through a local spool into the store
(spool.py, calls.py), and graded by outcomes the product reports later (feedback.py). The HTTP surface is app.py,
the process server.py. See docs/gateway.md.
"""
