"""The embedded demo (``make demo``): real digit scans as images and moving-digit clips (``digits``)."""
