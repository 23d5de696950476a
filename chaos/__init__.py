"""Fault-injection suite (built in the chaos issue)."""
