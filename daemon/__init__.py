"""The long-lived labd server: config, supervisor and launchers, limits, ingest, request handlers, CLI."""
