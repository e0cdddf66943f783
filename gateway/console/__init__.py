"""The admin console at /admin: sign-in, pages, dashboards (see gateway/console/app.py)."""
