"""rtk-archiver: archive Cloudflare RealtimeKit recordings into storage you own."""

__version__ = "0.1.0"
