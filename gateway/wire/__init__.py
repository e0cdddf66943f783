"""Wire formats other than chat completions, translated to and from the one internal (chat) request."""
