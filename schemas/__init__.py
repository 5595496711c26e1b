"""On-disk formats, each declared once with a version; writers and readers import these."""
