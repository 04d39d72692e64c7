"""The web UI: its pages and static files (`pages`), served by `server.app` beside the read API."""
