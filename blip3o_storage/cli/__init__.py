"""Command-line tools (console scripts; tools/*.py are thin wrappers): shared options, logging and exit statuses."""
