"""sandbox: a local llama.cpp backend and a chat front-end in a Docker sandbox with no route out."""

__version__ = "0.1.0"
