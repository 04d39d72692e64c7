"""The HTTP edge: the request header to the capture flag, trigger and user attributes (ASGI, WSGI)."""
