"""Workspace trust: a project's own policy file is input from the internet until the user trusts it."""
