"""agi-xmpp: XMPP chat and presence for Asterisk dialplans, served over FastAGI."""

__version__ = "0.1.0"
