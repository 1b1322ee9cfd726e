"""Tools the assistant can call: a sandboxed Python interpreter and a local search index."""
