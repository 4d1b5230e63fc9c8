"""recap index package."""
