"""`stepadapt tui`: a Textual app over the run store (see app.py)."""
