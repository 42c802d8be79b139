"""aigw: a local AI gateway with an OpenAI-compatible API."""

__version__ = "0.1.0"
