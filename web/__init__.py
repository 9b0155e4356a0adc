"""The web service (`copeau web`): kiosks at the machines, pages for the maîtres, a JSON API with OpenAPI docs.

`web.app.create_app(workshop)` builds the FastAPI application; everything it needs (database, MQTT link,
progress tracker) is built in its lifespan, never at import time. See docs/orders-and-kiosk.md.
"""
