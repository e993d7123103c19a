"""Judging a model version before and while it takes over: the promotion gate's figures
(``gate``) computed from what the agents' shadow and canary runs stored."""

__all__: list[str] = []
