"""The lab: evolved and synthesised images."""
