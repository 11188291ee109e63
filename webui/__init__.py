"""The monitor and config web app, served on the proxy's own port (see addons/webapp.py)."""
