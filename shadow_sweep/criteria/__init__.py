"""Importance criteria: one small pure function per criterion, and their registry."""
