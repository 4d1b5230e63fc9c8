"""The caption job: selected clips -> frame preparation (CPU tasks) -> generation (model actors) ->
caption versions in the library; and importing captions a corpus came with (importer.py)."""
