"""subscribers: the audience of digest — lists, segments, preferences, consent, import."""
