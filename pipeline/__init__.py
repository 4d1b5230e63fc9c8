"""recap pipeline package."""
