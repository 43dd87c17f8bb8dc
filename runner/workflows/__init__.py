"""Workflows: the built-in ones, and resolution of user workflows by import path."""
