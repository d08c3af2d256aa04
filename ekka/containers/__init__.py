"""Executors that run a probe at one commit: local worktree (default), docker, ray."""
