"""A stand-in for aistudio.google.com used by the tests (see README.md in this folder)."""
