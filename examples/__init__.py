"""Example applications served by Steward."""
