"""The HTTP face of stockkeeper: a bare ASGI app over the service layer."""
