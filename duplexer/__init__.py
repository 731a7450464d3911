"""duplexer: a full-duplex spoken-dialogue engine (Step-Audio real-time pipeline)."""

__version__ = "0.1.0"
