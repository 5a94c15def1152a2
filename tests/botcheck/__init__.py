"""A bot-check page for the instance's browser: the signals sites use to tell automation from desktop Chrome."""
