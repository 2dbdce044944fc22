"""Example noarch package for the bundled example env."""
