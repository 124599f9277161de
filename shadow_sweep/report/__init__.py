"""Sweep results -> a pandas table and matplotlib curves (`shadow-sweep report`)."""
