"""telelens: the hooked transformer core."""
