"""recap trainer package."""
