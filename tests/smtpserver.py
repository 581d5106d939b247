"""aiosmtpd-based SMTP servers for tests (fixtures)."""
