"""Serving: `vintage ask` from the shell and `vintage serve`, an OpenAI-compatible API on Ray Serve.
Imports vintage and corpora only."""
