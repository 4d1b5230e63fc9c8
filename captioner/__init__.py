"""recap captioner package."""
