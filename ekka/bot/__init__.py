"""The GitHub bot: webhook server, commands, job queue, comments."""
