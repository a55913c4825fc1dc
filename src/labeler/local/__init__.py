"""Local stand-ins for running the product without AWS: loopback servers and the embedded endpoint."""
