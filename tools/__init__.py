"""Development tools: not part of the installed agi_xmpp package (see docs/architecture.md)."""
