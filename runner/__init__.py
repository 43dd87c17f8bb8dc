"""The per-session process: bootstrap, output capture, the context API, the ag2 integration, built-in workflows."""
