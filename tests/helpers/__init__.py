"""Test helpers shared by several test files (import as ``from helpers.X import ...``)."""
