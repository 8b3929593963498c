"""`swapwatch serve`: the aiohttp server that hosts the monitor (API, live feed, dashboard, metrics, WHIP).

`create_app` (app.py) builds the application; this package's import stays light (no aiohttp) so the
monitor config can carry `ServerConfig` (config.py). See docs/server.md.
"""
